//! The plugin against a `LocalStore`, on a clock the tests move.

use std::sync::Arc;

use chrono::DateTime;
use tollgate_plugin::{
    Acquire, Acquired, Adjust, Admission, HeaderMap, LocalStore, ManualClock, ModelFilter, Outcome,
    Plugin, Principal, PrincipalKind, Rejection, Release, Request, Store, StoreError, TokenUsage,
};

use super::*;

fn at(rfc3339: &str) -> u64 {
    let t = DateTime::parse_from_rfc3339(rfc3339).unwrap();
    u64::try_from(t.timestamp_millis()).unwrap()
}

struct Env {
    clock: Arc<ManualClock>,
    store: Arc<LocalStore>,
    plugin: LimitsPlugin,
}

fn quotas(yaml: &str) -> Quotas {
    let config: QuotasConfig = serde_saphyr::from_str(yaml).unwrap();
    config.build().unwrap()
}

fn env(yaml: &str, now: &str) -> Env {
    let clock = Arc::new(ManualClock::new(at(now)));
    let store = Arc::new(LocalStore::with_clock(clock.clone()));
    let plugin = LimitsPlugin::with_clock(quotas(yaml), store.clone(), clock.clone());
    Env {
        clock,
        store,
        plugin,
    }
}

fn key(id: &str) -> Principal {
    Principal {
        kind: PrincipalKind::ApiKey,
        id: id.to_owned(),
        team: None,
        tier: None,
        models: ModelFilter::any(),
    }
}

/// One request: the model, its prompt tokens and `max_tokens`.
struct Ask<'a> {
    model: &'a str,
    prompt: u64,
    max_tokens: Option<u64>,
    id: &'a str,
}

fn ask<'a>(model: &'a str, id: &'a str) -> Ask<'a> {
    Ask {
        model,
        prompt: 100,
        max_tokens: None,
        id,
    }
}

impl Env {
    async fn admit(&self, a: &Ask<'_>, who: &Principal) -> Result<Admission, Rejection> {
        let headers = HeaderMap::new();
        let request = Request {
            headers: &headers,
            model: a.model,
            stream: false,
            max_tokens: a.max_tokens,
            prompt_tokens: a.prompt,
            request_id: a.id,
        };
        self.plugin.admit(&request, who).await
    }

    async fn get(&self, key: &str) -> u64 {
        self.store.get(&[key.to_owned()]).await.unwrap()[0]
    }

    fn minute(&self) -> String {
        window::minute(self.clock.now_ms()).label
    }
}

fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.to_str().ok())
}

fn served(usage: TokenUsage) -> Outcome<'static> {
    Outcome {
        usage: Some(usage),
        estimated: false,
        served_model: None,
    }
}

fn usage(prompt: u64, completion: u64, cached: u64) -> TokenUsage {
    TokenUsage {
        prompt,
        completion,
        cached,
        reasoning: 0,
    }
}

#[tokio::test(start_paused = true)]
async fn rpm_is_exact_and_the_sixth_request_waits_for_the_next_minute() {
    let e = env("keys: {alice: {rpm: 5}}", "2025-03-04T05:06:58.800Z");
    let alice = key("alice");
    for i in 0..5 {
        let id = format!("r{i}");
        let ok = e.admit(&ask("gpt-4o", &id), &alice).await.unwrap();
        let remaining = header(&ok.headers, "x-ratelimit-remaining-requests");
        assert_eq!(remaining, Some((4 - i).to_string().as_str()));
    }
    let no = e.admit(&ask("gpt-4o", "r5"), &alice).await.unwrap_err();
    assert_eq!(
        (no.status, no.kind, no.code),
        (429, "requests", "rate_limit_exceeded")
    );
    assert_eq!(no.reason, "rate_limit");
    assert_eq!(header(&no.headers, "retry-after-ms"), Some("1200"));
    assert_eq!(header(&no.headers, "retry-after"), Some("2"));
    assert_eq!(
        no.message,
        "Rate limit reached for gpt-4o in key alice on requests per min (RPM): Limit 5, \
         Used 5, Requested 1. Please try again in 1.2s."
    );
    e.clock.set(at("2025-03-04T05:06:59.999Z"));
    assert!(e.admit(&ask("gpt-4o", "r6"), &alice).await.is_err());
    e.clock.set(at("2025-03-04T05:07:00Z"));
    let ok = e.admit(&ask("gpt-4o", "r7"), &alice).await.unwrap();
    assert_eq!(
        header(&ok.headers, "x-ratelimit-remaining-requests"),
        Some("4")
    );
    assert_eq!(
        header(&ok.headers, "x-ratelimit-reset-requests"),
        Some("1m0s")
    );
}

#[tokio::test(start_paused = true)]
async fn tokens_are_reserved_then_trued_up_to_real_usage() {
    let e = env(
        "{keys: {alice: {tpm: 100000}}, default_max_tokens: 4096}",
        "2025-03-04T05:06:00Z",
    );
    let counter = format!("tg:tpm:key:alice:{}", e.minute());
    let ok = e.admit(&ask("gpt-4o", "r1"), &key("alice")).await.unwrap();
    assert_eq!(e.get(&counter).await, 100 + 4096);
    assert_eq!(
        header(&ok.headers, "x-ratelimit-limit-tokens"),
        Some("100000")
    );
    assert_eq!(
        header(&ok.headers, "x-ratelimit-remaining-tokens"),
        Some((100_000 - 4196).to_string().as_str())
    );
    assert_eq!(header(&ok.headers, "x-ratelimit-limit-requests"), None);
    ok.settle.unwrap().settle(&served(usage(100, 50, 0))).await;
    assert_eq!(e.get(&counter).await, 150);

    // A given max_tokens is what is reserved; usage above the reservation is charged.
    let mut a = ask("gpt-4o", "r2");
    a.max_tokens = Some(10);
    let ok = e.admit(&a, &key("alice")).await.unwrap();
    assert_eq!(e.get(&counter).await, 150 + 110);
    ok.settle.unwrap().settle(&served(usage(130, 10, 0))).await;
    assert_eq!(e.get(&counter).await, 150 + 140);
}

#[tokio::test(start_paused = true)]
async fn nothing_served_gives_the_whole_reservation_back() {
    let e = env(
        "keys: {alice: {tpm: 100000, budgets: [{tokens: 1000000, window: day}]}}",
        "2025-03-04T05:06:00Z",
    );
    let ok = e.admit(&ask("gpt-4o", "r1"), &key("alice")).await.unwrap();
    let tpm = format!("tg:tpm:key:alice:{}", e.minute());
    let day = "tg:tok:day:key:alice:20250304";
    assert_eq!((e.get(&tpm).await, e.get(day).await), (4196, 4196));
    let nothing = Outcome {
        usage: None,
        estimated: false,
        served_model: None,
    };
    ok.settle.unwrap().settle(&nothing).await;
    assert_eq!((e.get(&tpm).await, e.get(day).await), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_request_larger_than_the_tpm_limit_is_told_not_to_retry() {
    let e = env("keys: {alice: {tpm: 1000}}", "2025-03-04T05:06:00Z");
    let no = e
        .admit(&ask("gpt-4o", "r1"), &key("alice"))
        .await
        .unwrap_err();
    assert_eq!((no.status, no.kind), (429, "tokens"));
    assert_eq!(header(&no.headers, "x-should-retry"), Some("false"));
    assert_eq!(header(&no.headers, "retry-after"), None);
    assert!(
        no.message
            .starts_with("Request too large for gpt-4o in key alice")
    );

    let mut small = ask("gpt-4o", "r2");
    small.max_tokens = Some(500);
    e.admit(&small, &key("alice")).await.unwrap();
    let no = e.admit(&small, &key("alice")).await.unwrap_err();
    assert!(
        no.message.contains("Limit 1000, Used 600, Requested 600."),
        "{}",
        no.message
    );
    assert_eq!(header(&no.headers, "retry-after-ms"), Some("60000"));
}

#[tokio::test(start_paused = true)]
async fn concurrency_refuses_the_fourth_and_admits_it_once_one_settles() {
    let e = env("keys: {alice: {concurrency: 3}}", "2025-03-04T05:06:00Z");
    let alice = key("alice");
    let mut held = Vec::new();
    for id in ["r1", "r2", "r3"] {
        let ok = e.admit(&ask("gpt-4o", id), &alice).await.unwrap();
        assert!(
            ok.headers.is_empty(),
            "no x-ratelimit header for concurrency"
        );
        held.push(ok.settle.unwrap());
    }
    let no = e.admit(&ask("gpt-4o", "r4"), &alice).await.unwrap_err();
    assert_eq!(
        (no.status, no.kind, no.reason),
        (429, "requests", "rate_limit")
    );
    assert_eq!(header(&no.headers, "retry-after"), Some("1"));
    assert_eq!(header(&no.headers, "retry-after-ms"), Some("1000"));
    held.pop().unwrap().settle(&served(usage(10, 10, 0))).await;
    assert_eq!(e.get("tg:conc:key:alice").await, 2);
    e.admit(&ask("gpt-4o", "r4"), &alice).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_without_settling_releases_the_lease() {
    let e = env("keys: {alice: {concurrency: 1}}", "2025-03-04T05:06:00Z");
    let alice = key("alice");
    let ok = e.admit(&ask("gpt-4o", "r1"), &alice).await.unwrap();
    assert!(e.admit(&ask("gpt-4o", "r2"), &alice).await.is_err());
    drop(ok);
    // The release runs as a task on this runtime.
    tokio::task::yield_now().await;
    assert_eq!(e.get("tg:conc:key:alice").await, 0);
    e.admit(&ask("gpt-4o", "r2"), &alice).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_lease_is_kept_no_longer_than_lease_ttl() {
    let e = env(
        "{keys: {alice: {concurrency: 1}}, lease_ttl: 30s}",
        "2025-03-04T05:06:00Z",
    );
    let alice = key("alice");
    let lost = e.admit(&ask("gpt-4o", "r1"), &alice).await.unwrap();
    std::mem::forget(lost);
    e.clock.advance(29_999);
    assert!(e.admit(&ask("gpt-4o", "r2"), &alice).await.is_err());
    e.clock.advance(1);
    e.admit(&ask("gpt-4o", "r2"), &alice).await.unwrap();
}

const PRICED: &str = "
keys:
  alice:
    budgets: [{usd: 100, window: day}]
prices:
  gpt-4o: {input: 2.5, output: 10, cached_input: 1.25}
  gpt-4o-mini: {input: 0.15, output: 0.6}
";

#[tokio::test(start_paused = true)]
async fn usd_spend_is_usage_times_price_in_micro_dollars() {
    let e = env(PRICED, "2025-03-04T05:06:00Z");
    let counter = "tg:usd:day:key:alice:20250304";
    let a = Ask {
        model: "gpt-4o",
        prompt: 1000,
        max_tokens: Some(500),
        id: "r1",
    };
    let ok = e.admit(&a, &key("alice")).await.unwrap();
    // 1000 × $2.50/1M + 500 × $10/1M = $0.0025 + $0.005.
    assert_eq!(e.get(counter).await, 7500);
    // 600 uncached × 2.5 + 400 cached × 1.25 + 300 × 10 (micro-dollars).
    ok.settle
        .unwrap()
        .settle(&served(usage(1000, 300, 400)))
        .await;
    assert_eq!(e.get(counter).await, 1500 + 500 + 3000);

    // After a fallback, the model that served is the price.
    let ok = e
        .admit(&Ask { id: "r2", ..a }, &key("alice"))
        .await
        .unwrap();
    assert_eq!(e.get(counter).await, 5000 + 7500);
    let fallback = Outcome {
        usage: Some(usage(1000, 500, 0)),
        estimated: false,
        served_model: Some("gpt-4o-mini"),
    };
    ok.settle.unwrap().settle(&fallback).await;
    // 1000 × 0.15 + 500 × 0.6.
    assert_eq!(e.get(counter).await, 5000 + 150 + 300);
}

#[tokio::test(start_paused = true)]
async fn a_model_without_a_price_costs_nothing() {
    let e = env(PRICED, "2025-03-04T05:06:00Z");
    let ok = e.admit(&ask("llama", "r1"), &key("alice")).await.unwrap();
    ok.settle.unwrap().settle(&served(usage(100, 100, 0))).await;
    assert_eq!(e.get("tg:usd:day:key:alice:20250304").await, 0);
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_budget_is_insufficient_quota_and_not_worth_retrying() {
    let e = env(
        "keys: {alice: {rpm: 100, budgets: [{usd: 0.01, window: month}]}}\n\
         prices: {gpt-4o: {input: 2.5, output: 10}}",
        "2025-03-04T05:06:00Z",
    );
    let a = Ask {
        model: "gpt-4o",
        prompt: 1000,
        max_tokens: Some(500),
        id: "r1",
    };
    e.admit(&a, &key("alice")).await.unwrap();
    let no = e
        .admit(&Ask { id: "r2", ..a }, &key("alice"))
        .await
        .unwrap_err();
    assert_eq!(
        (no.status, no.kind, no.code, no.reason),
        (429, "insufficient_quota", "insufficient_quota", "budget")
    );
    assert_eq!(no.headers.len(), 1);
    assert_eq!(header(&no.headers, "x-should-retry"), Some("false"));
    assert!(
        no.message
            .contains("monthly budget of key alice is $0.01, $0.007500 used"),
        "{}",
        no.message
    );
    // The refused request charged nothing, its request count included.
    assert_eq!(e.get(&format!("tg:rpm:key:alice:{}", e.minute())).await, 1);
}

#[tokio::test(start_paused = true)]
async fn budgets_for_one_model_count_only_that_model() {
    let e = env(
        "keys: {alice: {budgets: [{tokens: 200, window: day, model: gpt-4o}]}}",
        "2025-03-04T05:06:00Z",
    );
    let mut a = ask("gpt-4o", "r1");
    a.max_tokens = Some(100);
    e.admit(&a, &key("alice")).await.unwrap();
    assert!(e.admit(&a, &key("alice")).await.is_err());
    let ok = e
        .admit(
            &Ask {
                model: "other",
                ..a
            },
            &key("alice"),
        )
        .await
        .unwrap();
    assert!(ok.settle.is_none(), "no budget applies to other models");
}

#[tokio::test(start_paused = true)]
async fn a_store_failure_is_a_503_not_a_429() {
    struct Down;
    #[async_trait]
    impl Store for Down {
        async fn acquire(&self, _: &[Acquire]) -> Result<Acquired, StoreError> {
            Err(StoreError("connection refused".to_owned()))
        }
        async fn adjust(&self, _: &[Adjust], _: &[Release]) -> Result<(), StoreError> {
            Err(StoreError("connection refused".to_owned()))
        }
        async fn get(&self, _: &[String]) -> Result<Vec<u64>, StoreError> {
            Err(StoreError("connection refused".to_owned()))
        }
        fn backend(&self) -> &'static str {
            "down"
        }
    }
    let plugin = LimitsPlugin::new(quotas("keys: {alice: {rpm: 5}}"), Arc::new(Down));
    let headers = HeaderMap::new();
    let request = Request {
        headers: &headers,
        model: "gpt-4o",
        stream: false,
        max_tokens: None,
        prompt_tokens: 1,
        request_id: "r1",
    };
    let no = plugin.admit(&request, &key("alice")).await.unwrap_err();
    assert_eq!(
        (no.status, no.kind, no.code, no.reason),
        (
            503,
            "server_error",
            "rate_limit_unavailable",
            "state_unavailable"
        )
    );
}

/// Spends a 100-token budget at `before`, checks that `before` is still refused and that
/// `after` is the next window.
async fn budget_resets_between(window: &str, before: &str, after: &str) {
    let yaml = format!("keys: {{alice: {{budgets: [{{tokens: 100, window: {window}}}]}}}}");
    let e = env(&yaml, before);
    let mut a = ask("gpt-4o", "r1");
    a.prompt = 50;
    a.max_tokens = Some(50);
    e.admit(&a, &key("alice")).await.unwrap();
    let no = e.admit(&a, &key("alice")).await.unwrap_err();
    assert_eq!(no.code, "insufficient_quota", "{window} at {before}");
    e.clock.set(at(after));
    e.admit(&a, &key("alice")).await.unwrap_or_else(|r| {
        panic!("{window}: not reset at {after}: {}", r.message);
    });
}

#[tokio::test(start_paused = true)]
async fn windows_reset_at_the_minute_hour_day_and_month_boundaries() {
    let e = env("keys: {alice: {rpm: 1}}", "2025-03-04T05:06:59.999Z");
    e.admit(&ask("m", "r1"), &key("alice")).await.unwrap();
    e.clock.set(at("2025-03-04T05:07:00Z"));
    e.admit(&ask("m", "r2"), &key("alice")).await.unwrap();

    budget_resets_between("hour", "2025-03-04T05:59:59.999Z", "2025-03-04T06:00:00Z").await;
    budget_resets_between("day", "2025-03-04T23:59:59.999Z", "2025-03-05T00:00:00Z").await;
    budget_resets_between("month", "2024-12-31T23:59:59.999Z", "2025-01-01T00:00:00Z").await;
    budget_resets_between("month", "2024-02-29T23:59:59.999Z", "2024-03-01T00:00:00Z").await;
    budget_resets_between("month", "2025-02-28T23:59:59.999Z", "2025-03-01T00:00:00Z").await;
    budget_resets_between("day", "2024-02-28T23:59:59.999Z", "2024-02-29T00:00:00Z").await;
}

#[tokio::test(start_paused = true)]
async fn a_month_lasts_to_its_last_day_and_a_lifetime_forever() {
    // Spent on Feb 1st of a leap year: still spent on the 29th, not on March 1st.
    let yaml = "keys: {alice: {budgets: [{tokens: 100, window: month}]}}";
    let e = env(yaml, "2024-02-01T00:00:00Z");
    let mut a = ask("m", "r1");
    a.max_tokens = Some(0);
    a.prompt = 100;
    e.admit(&a, &key("alice")).await.unwrap();
    e.clock.set(at("2024-02-29T23:00:00Z"));
    assert!(e.admit(&a, &key("alice")).await.is_err());
    e.clock.set(at("2024-03-01T00:00:00Z"));
    e.admit(&a, &key("alice")).await.unwrap();

    let e = env(
        "keys: {alice: {budgets: [{tokens: 100, window: lifetime}]}}",
        "2024-02-01T00:00:00Z",
    );
    e.admit(&a, &key("alice")).await.unwrap();
    e.clock.set(at("2034-02-01T00:00:00Z"));
    let no = e.admit(&a, &key("alice")).await.unwrap_err();
    assert!(!no.message.contains("resets"), "{}", no.message);
}

#[tokio::test(start_paused = true)]
async fn a_rule_per_key_per_model_keeps_a_counter_for_each_pair() {
    let e = env(
        "rules: [{per: [model, key], rpm: 1}]",
        "2025-03-04T05:06:00Z",
    );
    let (alice, bob) = (key("alice"), key("bob"));
    e.admit(&ask("gpt-4o", "r1"), &alice).await.unwrap();
    let no = e.admit(&ask("gpt-4o", "r2"), &alice).await.unwrap_err();
    assert!(
        no.message
            .contains("in key alice, model gpt-4o on requests"),
        "{}",
        no.message
    );
    e.admit(&ask("gpt-4o-mini", "r3"), &alice).await.unwrap();
    e.admit(&ask("gpt-4o", "r4"), &bob).await.unwrap();
    let minute = e.minute();
    assert_eq!(
        e.get(&format!("tg:rpm:rule:key:alice:model:gpt-4o:{minute}"))
            .await,
        1
    );
    assert_eq!(
        e.get(&format!("tg:rpm:rule:key:bob:model:gpt-4o:{minute}"))
            .await,
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_rule_on_a_team_skips_callers_without_one() {
    let e = env("rules: [{per: [team], rpm: 1}]", "2025-03-04T05:06:00Z");
    let mut alice = key("alice");
    let ok = e.admit(&ask("m", "r1"), &alice).await.unwrap();
    assert!(ok.headers.is_empty());
    alice.team = Some("red".to_owned());
    e.admit(&ask("m", "r2"), &alice).await.unwrap();
    assert!(e.admit(&ask("m", "r3"), &key("bob")).await.is_ok());
    assert!(e.admit(&ask("m", "r4"), &alice).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn headers_show_the_tightest_limit_and_only_for_limited_callers() {
    let e = env(
        "keys: {alice: {rpm: 10, tpm: 100000}}\n\
         teams: {red: {rpm: 3}}\n\
         models: {gpt-4o: {tpm: 50000}}",
        "2025-03-04T05:06:30Z",
    );
    let mut alice = key("alice");
    alice.team = Some("red".to_owned());
    let ok = e.admit(&ask("gpt-4o", "r1"), &alice).await.unwrap();
    let h = |n| header(&ok.headers, n).unwrap_or("-");
    assert_eq!(h("x-ratelimit-limit-requests"), "3");
    assert_eq!(h("x-ratelimit-remaining-requests"), "2");
    assert_eq!(h("x-ratelimit-reset-requests"), "30s");
    assert_eq!(h("x-ratelimit-limit-tokens"), "50000");
    assert_eq!(h("x-ratelimit-remaining-tokens"), "45804");
    assert_eq!(h("x-ratelimit-reset-tokens"), "30s");

    let ok = e.admit(&ask("other", "r2"), &key("bob")).await.unwrap();
    assert!(ok.headers.is_empty() && ok.settle.is_none());
}

#[tokio::test(start_paused = true)]
async fn nothing_is_charged_when_a_later_counter_refuses() {
    let e = env(
        "keys: {alice: {rpm: 10, tpm: 100000, concurrency: 5, budgets: [{tokens: 100000, window: day}]}, \
                bob: {rpm: 10, tpm: 100000, concurrency: 5, budgets: [{tokens: 100000, window: day}]}}\n\
         models: {gpt-4o: {rpm: 1}}",
        "2025-03-04T05:06:00Z",
    );
    e.admit(&ask("gpt-4o", "r1"), &key("alice")).await.unwrap();
    let no = e
        .admit(&ask("gpt-4o", "r2"), &key("bob"))
        .await
        .unwrap_err();
    assert!(
        no.message.contains("model gpt-4o (shared by all callers)"),
        "{}",
        no.message
    );
    let minute = e.minute();
    for counter in [
        format!("tg:rpm:key:bob:{minute}"),
        format!("tg:tpm:key:bob:{minute}"),
        "tg:conc:key:bob".to_owned(),
        "tg:tok:day:key:bob:20250304".to_owned(),
    ] {
        assert_eq!(e.get(&counter).await, 0, "{counter}");
    }
    assert_eq!(e.get(&format!("tg:rpm:key:alice:{minute}")).await, 1);
}

#[tokio::test(start_paused = true)]
async fn a_tier_limits_each_of_its_keys_on_its_own() {
    let e = env("tiers: {free: {rpm: 1}}", "2025-03-04T05:06:00Z");
    let mut alice = key("alice");
    alice.tier = Some("free".to_owned());
    let mut bob = key("bob");
    bob.tier = Some("free".to_owned());
    e.admit(&ask("m", "r1"), &alice).await.unwrap();
    e.admit(&ask("m", "r2"), &bob).await.unwrap();
    let no = e.admit(&ask("m", "r3"), &alice).await.unwrap_err();
    assert!(
        no.message.contains("in tier free (key alice)"),
        "{}",
        no.message
    );
}

#[test]
fn every_config_problem_is_reported_with_its_path() {
    let yaml = "
keys:
  alice:
    rpm: 0
    budgets:
      - {tokens: 10, usd: 1, window: day}
      - {window: day}
      - {usd: -1, window: month}
      - {tokens: 5, window: hour}
      - {tokens: 6, window: hour}
models:
  gpt-4o:
    budgets: [{tokens: 1, window: day, model: gpt-4o}]
rules:
  - {per: [key, key], rpm: 1}
  - {per: []}
  - {per: [key], tpm: 5}
prices:
  gpt-4o: {input: .nan, output: 1}
default_max_tokens: 0
lease_ttl: 0s
";
    let config: QuotasConfig = serde_saphyr::from_str(yaml).unwrap();
    let errors = config.build().unwrap_err();
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "quotas.keys.alice.rpm",
            "quotas.keys.alice.budgets[0]",
            "quotas.keys.alice.budgets[1]",
            "quotas.keys.alice.budgets[2].usd",
            "quotas.keys.alice.budgets[4]",
            "quotas.models.gpt-4o.budgets[0].model",
            "quotas.rules[0].per",
            "quotas.rules[1].per",
            "quotas.rules[1]",
            "quotas.rules[2].per",
            "quotas.prices.gpt-4o.input",
            "quotas.default_max_tokens",
            "quotas.lease_ttl",
        ],
        "{errors:#?}"
    );
}

#[test]
fn unknown_keys_are_refused() {
    let bad = serde_saphyr::from_str::<QuotasConfig>("keys: {alice: {rpn: 5}}");
    assert!(bad.unwrap_err().to_string().contains("rpn"));
    let bad = serde_saphyr::from_str::<QuotasConfig>("rules: [{per: [org], rpm: 5}]");
    assert!(bad.is_err());
}

#[test]
fn referenced_models_name_their_paths() {
    let config: QuotasConfig = serde_saphyr::from_str(
        "keys: {alice: {budgets: [{usd: 1, window: day, model: gpt-4o}]}}\n\
         models: {llama: {rpm: 1}}\n\
         prices: {mini: {input: 1, output: 2}}",
    )
    .unwrap();
    assert_eq!(
        config.referenced_models(),
        [
            ("quotas.models.llama".to_owned(), "llama"),
            ("quotas.prices.mini".to_owned(), "mini"),
            ("quotas.keys.alice.budgets[0].model".to_owned(), "gpt-4o"),
        ]
    );
}

#[test]
fn an_empty_section_is_empty() {
    let q = QuotasConfig::default().build().unwrap();
    assert!(q.is_empty());
    assert!(!quotas("keys: {a: {rpm: 1}}").is_empty());
}

#[test]
fn the_readme_example_builds() {
    #[derive(serde::Deserialize)]
    struct Section {
        quotas: QuotasConfig,
    }
    let readme = include_str!("../README.md");
    let start = readme.find("```yaml\n").unwrap() + "```yaml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let section: Section = serde_saphyr::from_str(&readme[start..end]).unwrap();
    let errors = section.quotas.validate();
    assert!(errors.is_empty(), "{errors:?}");
}
