//! Everything built from one config: the catalog and the upstream pools. A request takes
//! one snapshot and keeps it to its end.

use std::sync::Arc;

use tollgate_plugin::Plugin;

use crate::cache::ResponseCache;
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
    pub cache: Option<ResponseCache>,
    /// The limits plugin (also in `plugins`), for the admin API's usage view.
    pub limits: Option<Arc<tollgate_limits::LimitsPlugin>>,
}

impl State {
    /// Makes the keys and limits managed at run time count in this state's plugins.
    pub fn with_runtime_keys(self, registry: &KeyRegistry) -> State {
        if let Some(auth) = &self.config.auth {
            auth.0.attach_runtime_keys(registry.keys.clone());
        }
        if let Some(limits) = &self.limits {
            limits.attach_runtime_limits(registry.limits.clone());
        }
        self
    }
}

impl State {
    pub fn build(mut config: Config) -> Result<State, String> {
        let catalog = Catalog::new(&config);
        let shared = crate::store::build_state(&config.state).map_err(|e| e.to_string())?;
        let mut plugins: Vec<Arc<dyn Plugin>> = Vec::new();
        if let Some(auth) = &config.auth {
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
        let limits =
            quotas.map(|q| Arc::new(tollgate_limits::LimitsPlugin::new(q, shared.store.clone())));
        if let Some(l) = &limits {
            plugins.push(l.clone());
        }
        let cache = config
            .cache
            .take()
            .map(|policy| ResponseCache::new(policy, &config.state, config.quotas.clone()))
            .transpose()?;
        let pools = config
            .pools
            .iter()
            .map(|spec| Pool::build(spec.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(State {
            config: Arc::new(config),
            catalog,
            pools,
            loaded_at: crate::openai::unix_now(),
            accounting,
            plugins,
            shared,
            cache,
            limits,
        })
    }
}
