//! Everything built from one config: the catalog and the upstream pools. A request takes
//! one snapshot and keeps it to its end.

use std::sync::Arc;

use tollgate_plugin::Plugin;

use crate::cache::ResponseCache;
use crate::catalog::Catalog;
use crate::config::Config;
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
        if let Some(quotas) = &config.quotas {
            plugins.push(Arc::new(tollgate_limits::LimitsPlugin::new(
                quotas.clone(),
                shared.store.clone(),
            )));
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
        })
    }
}
