//! Each class of config mistake gives one message naming the line and the key path.

use std::path::Path;

use super::{ConfigError, parse};

const GOOD: &str = "\
listeners:
  - address: 127.0.0.1:8080
models:
  gpt-4o:
    aliases: [four]
    targets:
      - pool: openai
pools:
  openai:
    provider: openai
    endpoints:
      - url: https://api.openai.com/v1
        api_key: ${OPENAI_API_KEY}
";

fn env(name: &str) -> Option<String> {
    (name == "OPENAI_API_KEY").then(|| "sk-test".to_owned())
}

fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text, "gw.yaml", Path::new("."), &env) {
        Ok(_) => panic!("config should be invalid:\n{text}"),
        Err(e) => e.0,
    }
}

/// The single error for `text`, checked for line and path.
fn one_error(text: &str, line: u64, path: &str, says: &str) {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    let e = &errs[0];
    assert_eq!((e.line, e.path.as_str()), (line, path), "{e}");
    assert!(
        e.message.contains(says),
        "`{}` should say `{says}`",
        e.message
    );
    let shown = e.to_string();
    assert!(shown.starts_with(&format!("gw.yaml:{line}:")), "{shown}");
    assert!(shown.contains(path), "{shown}");
}

#[test]
fn the_good_config_loads_with_defaults() {
    let c = parse(GOOD, "gw.yaml", Path::new("."), &env).unwrap();
    assert_eq!(c.models[0].targets[0].upstream_model, "gpt-4o");
    let e = &c.pools[0].endpoints[0];
    assert_eq!(
        (e.host.as_str(), e.port, e.tls),
        ("api.openai.com", 443, true)
    );
    assert_eq!(e.base_path, "/v1");
    assert_eq!(e.api_keys[0].expose(), "sk-test");
    assert_eq!(format!("{:?}", e.api_keys), "[*****]");
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(c.server.threads, cores);
}

#[test]
fn yaml_syntax_error() {
    one_error(
        &GOOD.replace("models:\n", "models: [\n"),
        3,
        "models",
        "expected",
    );
}

#[test]
fn unknown_key() {
    one_error(
        &GOOD.replace(
            "    provider: openai\n",
            "    provider: openai\n    retries: 3\n",
        ),
        11,
        "pools.openai.retries",
        "unknown field `retries`",
    );
}

#[test]
fn wrong_type() {
    one_error(
        &format!("server:\n  threads: many\n{GOOD}"),
        2,
        "server.threads",
        "invalid",
    );
}

#[test]
fn unknown_provider() {
    one_error(
        &GOOD.replace("provider: openai", "provider: acme"),
        10,
        "pools.openai.provider",
        "unknown variant `acme`",
    );
}

#[test]
fn missing_required_key() {
    let errs = errors(&GOOD.replace(
        "      - url: https://api.openai.com/v1\n        api_key",
        "      - api_key",
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].message.contains("missing field `url`"),
        "{}",
        errs[0]
    );
    assert!(
        errs[0].path.starts_with("pools.openai.endpoints[0]"),
        "{}",
        errs[0]
    );
    assert!(errs[0].line > 0, "{}", errs[0]);
}

#[test]
fn missing_environment_variable_is_named() {
    one_error(
        &GOOD.replace("OPENAI_API_KEY", "ACME_KEY"),
        13,
        "pools.openai.endpoints[0].api_key",
        "environment variable `ACME_KEY` is not set",
    );
}

#[test]
fn unknown_pool() {
    one_error(
        &GOOD.replace("- pool: openai", "- pool: opnai"),
        7,
        "models.gpt-4o.targets[0].pool",
        "no pool named `opnai`",
    );
}

#[test]
fn alias_taken_twice() {
    one_error(
        &GOOD.replace("aliases: [four]", "aliases: [four, gpt-4o]"),
        5,
        "models.gpt-4o.aliases[1]",
        "already the name or an alias",
    );
}

#[test]
fn bad_listener_address() {
    one_error(
        &GOOD.replace("127.0.0.1:8080", "localhost"),
        2,
        "listeners[0].address",
        "not an IP:port",
    );
}

#[test]
fn bad_url() {
    one_error(
        &GOOD.replace("https://api.openai.com/v1", "ftp://api.openai.com/v1"),
        12,
        "pools.openai.endpoints[0].url",
        "scheme `ftp`",
    );
}

#[test]
fn zero_duration() {
    one_error(
        &GOOD.replace(
            "    provider: openai\n",
            "    provider: openai\n    timeouts: {idle: 0s}\n",
        ),
        11,
        "pools.openai.timeouts.idle",
        "longer than zero",
    );
}

#[test]
fn missing_certificate_file() {
    one_error(
        &GOOD.replace(
            "  - address: 127.0.0.1:8080\n",
            "  - address: 127.0.0.1:8443\n    tls: {cert_file: /nonexistent/c.pem, key_file: Cargo.toml}\n",
        ),
        3,
        "listeners[0].tls.cert_file",
        "cannot read file",
    );
}

#[test]
fn every_semantic_error_is_reported_at_once_in_file_order() {
    let text = GOOD
        .replace("aliases: [four]", "aliases: [gpt-4o]")
        .replace("- pool: openai", "- pool: nope")
        .replace("OPENAI_API_KEY", "ACME_KEY");
    let lines: Vec<u64> = errors(&text).iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![5, 7, 13]);
}

#[test]
fn routing_settings_load() {
    let text = GOOD.replace(
        "    aliases: [four]\n",
        "    aliases: [four]\n    fallbacks: [mini]\n    context_window: 128000\n",
    ) + concat!(
        "    balance: {strategy: consistent_hash, hash_on: ['header:X-Tenant', 'body:user']}\n",
        "    health_check: {path: /health, interval: 2s}\n",
        "    breaker: {enabled: false}\n",
        "    retry: {attempts: 2, backoff: 10ms}\n",
        "routing: {max_attempts: 3, deadline: 20s}\n",
    );
    let text = text.replace(
        "pools:\n",
        "  mini:\n    targets:\n      - pool: openai\npools:\n",
    );
    let c = parse(&text, "gw.yaml", Path::new("."), &env).unwrap();
    let gpt = c.models.iter().find(|m| m.name == "gpt-4o").unwrap();
    let mini = c.models.iter().position(|m| m.name == "mini").unwrap();
    assert_eq!(gpt.fallbacks, [mini]);
    assert_eq!(gpt.context_window, Some(128000));
    let p = &c.pools[0];
    assert_eq!(p.balance.strategy, super::Strategy::ConsistentHash);
    assert_eq!(
        p.balance.hash_on,
        [
            super::HashSource::Header("x-tenant".into()),
            super::HashSource::BodyUser
        ]
    );
    assert_eq!(
        p.health_check.as_ref().unwrap().path.as_deref(),
        Some("/health")
    );
    assert!(p.breaker.is_none());
    assert_eq!(p.retry.attempts, 2);
    assert_eq!(p.endpoints[0].name, "api.openai.com:443");
    assert_eq!(c.routing.max_attempts, 3);
}

#[test]
fn unknown_fallback() {
    one_error(
        &GOOD.replace(
            "    aliases: [four]\n",
            "    aliases: [four]\n    fallbacks: [gpt-5]\n",
        ),
        6,
        "models.gpt-4o.fallbacks[0]",
        "no model named `gpt-5`",
    );
}

#[test]
fn fallback_to_itself() {
    one_error(
        &GOOD.replace(
            "    aliases: [four]\n",
            "    aliases: [four]\n    fallbacks: [gpt-4o]\n",
        ),
        6,
        "models.gpt-4o.fallbacks[0]",
        "cannot fall back to itself",
    );
}

#[test]
fn both_api_key_and_api_keys() {
    one_error(
        &GOOD.replace(
            "api_key: ${OPENAI_API_KEY}",
            "api_key: ${OPENAI_API_KEY}\n        api_keys: [a, b]",
        ),
        13,
        "pools.openai.endpoints[0].api_key",
        "not both",
    );
}

#[test]
fn bad_hash_source() {
    one_error(
        &(GOOD.to_owned() + "    balance: {hash_on: ['cookie:sid']}\n"),
        14,
        "pools.openai.balance.hash_on[0]",
        "`cookie:sid` is not",
    );
}

#[test]
fn ratio_out_of_range() {
    one_error(
        &(GOOD.to_owned() + "    breaker: {failure_ratio: 1.5}\n"),
        14,
        "pools.openai.breaker.failure_ratio",
        "at most 1",
    );
}

#[test]
fn unknown_strategy() {
    let errs = errors(&(GOOD.to_owned() + "    balance: {strategy: random}\n"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].line, 14, "{}", errs[0]);
    assert!(errs[0].message.contains("round_robin"), "{}", errs[0]);
}

const PRIORITIES: &str = "\
priorities:
  classes:
    interactive: {level: 10, max_wait: 10s, max_queue: 50}
    batch: {level: 1, sheddable: true}
  default: interactive
  tiers: {free: batch}
  keys: {nightly: batch}
";

#[test]
fn queue_and_priorities_load() {
    let text = GOOD.to_owned()
        + "    queue: {max_in_flight_per_endpoint: 4, max_length: 20, max_wait: 5s}\n"
        + PRIORITIES;
    let c = parse(&text, "gw.yaml", Path::new("."), &env).unwrap();
    let q = c.pools[0].queue.as_ref().unwrap();
    assert_eq!(q.max_in_flight_per_endpoint, Some(4));
    assert_eq!(q.max_length, 20);
    assert_eq!(q.max_wait, std::time::Duration::from_secs(5));
    assert_eq!(q.retry_after, std::time::Duration::from_secs(1));
    let p = &c.priorities;
    let names: Vec<&str> = p.classes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["batch", "interactive"]);
    let interactive = &p.classes[1];
    assert_eq!(interactive.level, 10);
    assert_eq!(interactive.max_queue, Some(50));
    assert!(p.classes[0].sheddable && !interactive.sheddable);

    let mut who = tollgate_plugin::Principal::anonymous();
    assert_eq!(p.class_of(Some(&who)).1.name, "interactive");
    assert_eq!(p.class_of(None).1.name, "interactive");
    who.tier = Some("free".into());
    assert_eq!(p.class_of(Some(&who)).1.name, "batch");
    who.tier = None;
    who.id = "nightly".into();
    assert_eq!(p.class_of(Some(&who)).1.name, "batch");
}

#[test]
fn without_a_queue_section_nothing_queues() {
    let c = parse(GOOD, "gw.yaml", Path::new("."), &env).unwrap();
    assert!(c.pools[0].queue.is_none());
    assert_eq!(c.priorities.classes.len(), 1);
    assert_eq!(c.priorities.class_of(None).1.name, "default");
}

#[test]
fn a_queue_needs_a_bound() {
    one_error(
        &(GOOD.to_owned() + "    queue: {max_length: 10}\n"),
        14,
        "pools.openai.queue",
        "needs `max_in_flight_per_endpoint`",
    );
}

#[test]
fn a_load_aware_queue_may_go_by_load_alone() {
    let text = GOOD.to_owned() + "    balance: {strategy: load_aware}\n    queue: {}\n";
    let c = parse(&text, "gw.yaml", Path::new("."), &env).unwrap();
    let q = c.pools[0].queue.as_ref().unwrap();
    assert_eq!(q.max_in_flight_per_endpoint, None);
    assert!(q.load_signals);
}

#[test]
fn unknown_queue_key() {
    one_error(
        &(GOOD.to_owned() + "    queue: {max_in_flight: 4}\n"),
        14,
        "pools.openai.queue.max_in_flight",
        "unknown field `max_in_flight`",
    );
}

#[test]
fn zero_slots() {
    one_error(
        &(GOOD.to_owned() + "    queue: {max_in_flight_per_endpoint: 0}\n"),
        14,
        "pools.openai.queue.max_in_flight_per_endpoint",
        "at least 1",
    );
}

#[test]
fn unknown_priority_class() {
    one_error(
        &(GOOD.to_owned() + &PRIORITIES.replace("{free: batch}", "{free: bach}")),
        19,
        "priorities.tiers.free",
        "no class named `bach`",
    );
}

#[test]
fn several_classes_need_a_default() {
    one_error(
        &(GOOD.to_owned() + &PRIORITIES.replace("  default: interactive\n", "")),
        16,
        "priorities.default",
        "name the class",
    );
}

#[test]
fn a_mock_pool_takes_no_queue() {
    let text = GOOD.replace(
        "  openai:\n",
        "  local:\n    provider: mock\n    queue: {max_in_flight_per_endpoint: 1}\n  openai:\n",
    );
    one_error(&text, 11, "pools.local.queue", "takes no queue");
}

#[test]
fn anthropic_pools_load_with_their_max_tokens_default() {
    let text = GOOD.replace("provider: openai", "provider: anthropic");
    let c = parse(&text, "gw.yaml", Path::new("."), &env).unwrap();
    assert_eq!(c.pools[0].provider, super::ProviderKind::Anthropic);
    assert_eq!(c.pools[0].anthropic.default_max_tokens, 4096);
    let text = format!("{text}    anthropic: {{default_max_tokens: 1024}}\n");
    let c = parse(&text, "gw.yaml", Path::new("."), &env).unwrap();
    assert_eq!(c.pools[0].anthropic.default_max_tokens, 1024);
}

#[test]
fn anthropic_settings_belong_to_anthropic_pools() {
    one_error(
        &format!("{GOOD}    anthropic: {{default_max_tokens: 1024}}\n"),
        14,
        "pools.openai.anthropic",
        "only a `provider: anthropic` pool",
    );
    one_error(
        &format!(
            "{}    anthropic: {{default_max_tokens: 0}}\n",
            GOOD.replace("provider: openai", "provider: anthropic")
        ),
        14,
        "pools.openai.anthropic.default_max_tokens",
        "at least 1",
    );
}
