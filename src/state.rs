//! Everything built from one config: the catalog, the upstream pools, the plugins, the
//! shared state and the response cache. A request takes one snapshot and keeps it to its
//! end.
//!
//! A reload builds the next state with [`State::carry_over`], which keeps from the
//! running state what the new config did not change, so that a reload resets nothing it
//! does not have to: the limit counters (a fresh store would let every key start its
//! window over), the cached answers, and each unchanged pool with its health, breakers,
//! latency and connection figures.

use std::sync::Arc;

use tollgate_plugin::Plugin;

use crate::cache::{CacheConfig, ResponseCache};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::key_admin::KeyRegistry;
use crate::store::SharedState;
use crate::upstream::Pool;

pub struct State {
    pub config: Arc<Config>,
    pub catalog: Catalog,
    /// Indexed like `config.pools`.
    pub pools: Vec<Arc<Pool>>,
    /// When this config was loaded (Unix seconds): the `created` of listed models.
    pub loaded_at: u64,
    /// Token accounting is on (limits or budgets configured): streams keep their
    /// generated text so that one cut short can still be counted.
    pub accounting: bool,
    /// The policy plugins, in request-path order (authentication, then limits).
    pub plugins: Vec<Arc<dyn Plugin>>,
    /// Where limits and budgets are counted.
    pub shared: SharedState,
    /// The response cache, when configured.
    pub cache: Option<Arc<ResponseCache>>,
    /// The `cache:` section the cache was built from (`config.cache` is taken by the
    /// cache), to tell whether a reload changed it.
    pub cache_config: Option<CacheConfig>,
    /// The limits plugin (also in `plugins`), for the admin API's usage view.
    pub limits: Option<Arc<tollgate_limits::LimitsPlugin>>,
    /// Keys and limits managed at run time: one for the process, handed from state to
    /// state, counted by this state's plugins.
    pub registry: Arc<KeyRegistry>,
}

/// What [`State::carry_over`] kept from the running state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Carried {
    /// Pools kept as they were, by name.
    pub pools_kept: Vec<String>,
    /// Pools built anew (new, changed, or re-reading a `ca_file`), by name.
    pub pools_built: Vec<String>,
    /// Running pools the new config no longer has, by name.
    pub pools_removed: Vec<String>,
    /// The shared state (limit and budget counters) was kept.
    pub shared_kept: bool,
    /// The response cache was kept with its entries (false also when there is none).
    pub cache_kept: bool,
}

impl State {
    /// The state of a first config: everything built anew; `registry` holds the keys
    /// and limits managed at run time.
    pub fn build(config: Config, registry: Arc<KeyRegistry>) -> Result<State, String> {
        Self::assemble(config, None, registry).map(|(state, _)| state)
    }

    /// The state of a reloaded config, keeping from `running` what did not change: the
    /// shared state when the `state:` section is the same, the response cache when the
    /// `cache:` and `state:` sections are, and each pool whose settings are (a pool with
    /// a `ca_file` is rebuilt, so a renewed CA file takes effect).
    pub fn carry_over(config: Config, running: &State) -> Result<(State, Carried), String> {
        Self::assemble(config, Some(running), running.registry.clone())
    }

    fn assemble(
        mut config: Config,
        running: Option<&State>,
        registry: Arc<KeyRegistry>,
    ) -> Result<(State, Carried), String> {
        let mut carried = Carried::default();
        let catalog = Catalog::new(&config);
        let shared = match running.filter(|r| r.config.state == config.state) {
            Some(r) => {
                carried.shared_kept = true;
                r.shared.clone()
            }
            None => crate::store::build_state(&config.state).map_err(|e| e.to_string())?,
        };
        let mut plugins: Vec<Arc<dyn Plugin>> = Vec::new();
        if let Some(auth) = &config.auth {
            auth.0.attach_runtime_keys(registry.keys.clone());
            plugins.push(auth.0.clone());
        }
        let accounting = config.quotas.is_some();
        // With the admin API on, limits may be set at run time: the plugin is there even
        // when the file sets none.
        let admin_api = config.admin.as_ref().is_some_and(|a| a.token.is_some());
        let quotas = match &config.quotas {
            Some(q) => Some(q.clone()),
            None if admin_api => tollgate_limits::QuotasConfig::default().build().ok(),
            None => None,
        };
        let limits = quotas.map(|q| {
            let plugin = tollgate_limits::LimitsPlugin::new(q, shared.store.clone());
            plugin.attach_runtime_limits(registry.limits.clone());
            Arc::new(plugin)
        });
        if let Some(l) = &limits {
            plugins.push(l.clone());
        }
        let cache_config = config.cache.as_ref().map(|policy| policy.config.clone());
        let kept_cache = running
            .filter(|r| carried.shared_kept && r.cache_config == cache_config)
            .and_then(|r| r.cache.clone());
        let cache = match kept_cache {
            Some(cache) => {
                carried.cache_kept = true;
                config.cache = None;
                Some(cache)
            }
            None => config
                .cache
                .take()
                .map(|policy| ResponseCache::new(policy, &config.state, config.quotas.clone()))
                .transpose()?
                .map(Arc::new),
        };
        let mut pools = Vec::with_capacity(config.pools.len());
        for spec in &config.pools {
            let same = running.and_then(|r| {
                r.pools
                    .iter()
                    .find(|p| p.spec == *spec && spec.ca_file.is_none())
            });
            match same {
                Some(pool) => {
                    carried.pools_kept.push(spec.name.clone());
                    pools.push(pool.clone());
                }
                None => {
                    carried.pools_built.push(spec.name.clone());
                    pools.push(Arc::new(Pool::build(spec.clone())?));
                }
            }
        }
        if let Some(r) = running {
            carried.pools_removed = r
                .config
                .pools
                .iter()
                .filter(|old| !config.pools.iter().any(|new| new.name == old.name))
                .map(|old| old.name.clone())
                .collect();
        }
        let state = State {
            config: Arc::new(config),
            catalog,
            pools,
            loaded_at: crate::openai::unix_now(),
            accounting,
            plugins,
            shared,
            cache,
            cache_config,
            limits,
            registry,
        };
        Ok((state, carried))
    }
}

#[cfg(test)]
impl State {
    /// [`State::build`] with no runtime keys.
    pub fn build_for_test(config: Config) -> Result<State, String> {
        State::build(config, Arc::new(KeyRegistry::nowhere()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        crate::config::parse(yaml, "test.yaml", std::path::Path::new("."), &|_| None)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Two pools (`a`, `b`) with `a_url` and `b_url`, then `rest` (top-level sections).
    fn yaml(a_url: &str, b_url: &str, rest: &str) -> String {
        format!(
            "listeners: [{{address: '127.0.0.1:0'}}]\n\
             models:\n  m:\n    targets: [{{pool: a}}, {{pool: b}}]\n\
             pools:\n\
             \x20 a:\n    provider: openai\n    endpoints: [{{url: '{a_url}'}}]\n    health_check: {{enabled: false}}\n\
             \x20 b:\n    provider: openai\n    endpoints: [{{url: '{b_url}'}}]\n    health_check: {{enabled: false}}\n\
             {rest}"
        )
    }

    const CACHE: &str = "cache: {backend: memory, max_bytes: 1048576}\n";

    #[tokio::test]
    async fn unchanged_pools_shared_state_and_cache_are_kept() {
        let running = State::build_for_test(config(&yaml(
            "http://127.0.0.1:1/v1",
            "http://127.0.0.1:2/v1",
            CACHE,
        )))
        .unwrap();
        let (next, carried) = State::carry_over(
            config(&yaml(
                "http://127.0.0.1:1/v1",
                "http://127.0.0.1:3/v1",
                &format!("{CACHE}routing: {{max_attempts: 2}}\n"),
            )),
            &running,
        )
        .unwrap();
        assert!(Arc::ptr_eq(&next.pools[0], &running.pools[0]));
        assert!(!Arc::ptr_eq(&next.pools[1], &running.pools[1]));
        assert!(Arc::ptr_eq(&next.shared.store, &running.shared.store));
        assert!(Arc::ptr_eq(
            next.cache.as_ref().unwrap(),
            running.cache.as_ref().unwrap()
        ));
        assert_eq!(
            carried,
            Carried {
                pools_kept: vec!["a".into()],
                pools_built: vec!["b".into()],
                pools_removed: vec![],
                shared_kept: true,
                cache_kept: true,
            }
        );
    }

    #[tokio::test]
    async fn a_changed_section_is_built_anew() {
        let running = State::build_for_test(config(&yaml(
            "http://127.0.0.1:1/v1",
            "http://127.0.0.1:2/v1",
            CACHE,
        )))
        .unwrap();
        // Another cache size: a new cache, the same counters.
        let (next, carried) = State::carry_over(
            config(&yaml(
                "http://127.0.0.1:1/v1",
                "http://127.0.0.1:2/v1",
                "cache: {backend: memory, max_bytes: 2097152}\n",
            )),
            &running,
        )
        .unwrap();
        assert!(carried.shared_kept && !carried.cache_kept);
        assert!(!Arc::ptr_eq(
            next.cache.as_ref().unwrap(),
            running.cache.as_ref().unwrap()
        ));
        // Another `state:` section: new counters, and so a new cache too.
        let (next, carried) = State::carry_over(
            config(&yaml(
                "http://127.0.0.1:1/v1",
                "http://127.0.0.1:2/v1",
                &format!(
                    "{CACHE}state: {{backend: redis, redis: {{url: 'redis://127.0.0.1:1'}}}}\n"
                ),
            )),
            &running,
        )
        .unwrap();
        assert!(!carried.shared_kept && !carried.cache_kept);
        assert!(!Arc::ptr_eq(&next.shared.store, &running.shared.store));
        // No cache any more.
        let (next, carried) = State::carry_over(
            config(&yaml("http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1", "")),
            &running,
        )
        .unwrap();
        assert!(next.cache.is_none() && !carried.cache_kept);
    }

    #[tokio::test]
    async fn a_removed_pool_is_reported_and_dropped() {
        let running = State::build_for_test(config(&yaml(
            "http://127.0.0.1:1/v1",
            "http://127.0.0.1:2/v1",
            "",
        )))
        .unwrap();
        let only_a = "listeners: [{address: '127.0.0.1:0'}]\n\
                      models:\n  m:\n    targets: [{pool: a}]\n\
                      pools:\n  a:\n    provider: openai\n    endpoints: [{url: 'http://127.0.0.1:1/v1'}]\n    health_check: {enabled: false}\n";
        let (next, carried) = State::carry_over(config(only_a), &running).unwrap();
        assert_eq!(carried.pools_kept, ["a"]);
        assert_eq!(carried.pools_removed, ["b"]);
        let b = Arc::downgrade(&running.pools[1]);
        drop(running);
        assert!(b.upgrade().is_none(), "nothing else holds the removed pool");
        assert_eq!(next.pools.len(), 1);
    }
}
