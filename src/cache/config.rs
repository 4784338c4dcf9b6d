//! The top-level `cache:` section, and what it decides for one request.
//!
//! Settings apply in three layers: the section's own, then the rule of the request's
//! model (`models:`, an exact name or a glob), then the rule of the caller's key id
//! (`keys:`); each rule sets only what it names. Among model rules an exact name wins,
//! then the longest matching glob.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use tollgate_plugin::ModelFilter;

/// The largest entry the memory backend takes (its eviction weighs entries in 64-byte
/// units, at most `u16::MAX` of them).
pub const MAX_ENTRY_BYTES: usize = u16::MAX as usize * super::memory::WEIGHT_UNIT;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default)]
    pub backend: BackendKind,
    /// Memory backend: the most bytes of answers held; beyond it the least useful are
    /// evicted (TinyUFO: admission by frequency, S3-FIFO eviction).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    #[serde(flatten)]
    pub defaults: CacheRule,
    /// The longest TTL a request's `x-tollgate-cache-ttl` header may ask for.
    #[serde(default = "default_max_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Whose answers a request may be served: `team` (default; a key without a team is
    /// its own scope), `key`, or `shared` (everyone's).
    #[serde(default)]
    pub scope: ScopeKind,
    /// Identical requests arriving while the first is in flight wait for its answer
    /// instead of all going upstream (within this process).
    #[serde(default = "yes")]
    pub coalesce: bool,
    /// How long such a request waits for the first before going upstream itself.
    #[serde(default = "default_coalesce_wait", with = "humantime_serde")]
    pub coalesce_wait: Duration,
    /// Whether a hit counts the cached answer's tokens against the caller's token and
    /// cost limits and budgets (default: a hit costs nothing; it still counts as a
    /// request).
    #[serde(default)]
    pub charge_hits: bool,
    /// Per public model (exact name or glob).
    #[serde(default)]
    pub models: BTreeMap<String, CacheRule>,
    /// Per gateway key id (the principal's id).
    #[serde(default)]
    pub keys: BTreeMap<String, CacheRule>,
}

/// Settings a model or key rule may override.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheRule {
    pub enabled: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    pub max_entry_bytes: Option<usize>,
    /// Cache only requests asking for a repeatable answer (`temperature: 0` or a
    /// `seed`). Default true.
    pub deterministic_only: Option<bool>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// In this process, bounded by `max_bytes`.
    #[default]
    Memory,
    /// The Redis of `state.redis` (whatever `state.backend` is), with TTLs: shared by
    /// every gateway instance.
    Redis,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeKind {
    #[default]
    Team,
    Key,
    Shared,
}

fn default_max_bytes() -> usize {
    256 * 1024 * 1024
}

fn default_max_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_coalesce_wait() -> Duration {
    Duration::from_secs(30)
}

fn yes() -> bool {
    true
}

/// The settings that hold for one request, all layers applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub enabled: bool,
    pub ttl: Duration,
    pub max_entry_bytes: usize,
    pub deterministic_only: bool,
}

const DEFAULT_SETTINGS: Settings = Settings {
    enabled: true,
    ttl: Duration::from_secs(3600),
    max_entry_bytes: 1024 * 1024,
    deterministic_only: true,
};

impl Settings {
    fn apply(mut self, rule: &CacheRule) -> Settings {
        if let Some(v) = rule.enabled {
            self.enabled = v;
        }
        if let Some(v) = rule.ttl {
            self.ttl = v;
        }
        if let Some(v) = rule.max_entry_bytes {
            self.max_entry_bytes = v;
        }
        if let Some(v) = rule.deterministic_only {
            self.deterministic_only = v;
        }
        self
    }
}

/// The section, checked and ready to answer [`Policy::settings`].
#[derive(Debug)]
pub struct Policy {
    pub config: CacheConfig,
    defaults: Settings,
    /// Globs, longest pattern first.
    model_globs: Vec<(ModelFilter, CacheRule)>,
}

impl Policy {
    /// Checks the section; every problem as `(path under cache, message)`.
    pub fn build(config: CacheConfig) -> Result<Policy, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let defaults = DEFAULT_SETTINGS.apply(&config.defaults);
        let check = |path: String, rule: &CacheRule, problems: &mut Vec<(String, String)>| {
            if let Some(ttl) = rule.ttl {
                if ttl.is_zero() {
                    problems.push((format!("{path}ttl"), "must be longer than zero".into()));
                } else if ttl > config.max_ttl {
                    problems.push((
                        format!("{path}ttl"),
                        format!(
                            "longer than max_ttl ({})",
                            humantime::format_duration(config.max_ttl)
                        ),
                    ));
                }
            }
            if let Some(n) = rule.max_entry_bytes {
                let cap = MAX_ENTRY_BYTES.min(config.max_bytes);
                if n == 0 || n > cap {
                    problems.push((
                        format!("{path}max_entry_bytes"),
                        format!("must be between 1 and {cap} (the smaller of max_bytes and {MAX_ENTRY_BYTES})"),
                    ));
                }
            }
        };
        check(String::new(), &config.defaults, &mut problems);
        if defaults.max_entry_bytes > config.max_bytes && config.defaults.max_entry_bytes.is_none()
        {
            problems.push((
                "max_bytes".into(),
                format!(
                    "smaller than one entry (max_entry_bytes {})",
                    defaults.max_entry_bytes
                ),
            ));
        }
        if config.max_ttl.is_zero() {
            problems.push(("max_ttl".into(), "must be longer than zero".into()));
        }
        if config.coalesce_wait.is_zero() {
            problems.push(("coalesce_wait".into(), "must be longer than zero".into()));
        }
        let mut model_globs = Vec::new();
        for (pattern, rule) in &config.models {
            check(format!("models.{pattern}."), rule, &mut problems);
            match ModelFilter::new(&[pattern]) {
                Ok(filter) => model_globs.push((filter, rule.clone())),
                Err(e) => problems.push((format!("models.{pattern}"), e)),
            }
        }
        model_globs.sort_by_key(|(f, _)| std::cmp::Reverse(f.patterns()[0].len()));
        for (id, rule) in &config.keys {
            check(format!("keys.{id}."), rule, &mut problems);
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Policy {
            config,
            defaults,
            model_globs,
        })
    }

    /// The settings for `model` (the public name) asked by key `key_id`.
    pub fn settings(&self, model: &str, key_id: &str) -> Settings {
        let mut s = self.defaults;
        let model_rule = self.config.models.get(model).or_else(|| {
            self.model_globs
                .iter()
                .find(|(f, _)| f.allows(model))
                .map(|(_, r)| r)
        });
        if let Some(rule) = model_rule {
            s = s.apply(rule);
        }
        if let Some(rule) = self.config.keys.get(key_id) {
            s = s.apply(rule);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Result<Policy, Vec<(String, String)>> {
        Policy::build(serde_saphyr::from_str(yaml).unwrap())
    }

    #[test]
    fn defaults_then_model_then_key() {
        let p = policy(
            "ttl: 10m\nmodels:\n  'gpt-*': {ttl: 1m}\n  'gpt-4o*': {enabled: false}\n  gpt-4o-mini: {deterministic_only: false}\nkeys:\n  batch: {enabled: true, ttl: 2h}\n",
        )
        .unwrap();
        let s = p.settings("llama", "k");
        assert_eq!(
            s,
            Settings {
                ttl: Duration::from_secs(600),
                ..DEFAULT_SETTINGS
            }
        );
        assert_eq!(p.settings("gpt-3.5", "k").ttl, Duration::from_secs(60));
        // The longer glob wins over the shorter.
        assert!(!p.settings("gpt-4o", "k").enabled);
        // An exact name wins over globs (and does not inherit them).
        let mini = p.settings("gpt-4o-mini", "k");
        assert!(mini.enabled && !mini.deterministic_only);
        let batch = p.settings("gpt-4o", "batch");
        assert!(batch.enabled);
        assert_eq!(batch.ttl, Duration::from_secs(7200));
    }

    #[test]
    fn bad_values_are_named() {
        let problems = policy(
            "ttl: 48h\nmax_bytes: 1000\nmodels:\n  '[': {}\n  m: {max_entry_bytes: 0}\nkeys:\n  k: {ttl: 0s}\n",
        )
        .unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        for want in [
            "ttl",
            "max_bytes",
            "models.[",
            "models.m.max_entry_bytes",
            "keys.k.ttl",
        ] {
            assert!(paths.contains(&want), "{want} not in {problems:?}");
        }
    }
}
