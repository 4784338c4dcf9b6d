//! Everything built from one config: the catalog and the upstream pools. A request takes
//! one snapshot and keeps it to its end.

use std::sync::Arc;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::upstream::Pool;

#[derive(Debug)]
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
}

impl State {
    pub fn build(config: Config) -> Result<State, String> {
        let catalog = Catalog::new(&config);
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
            accounting: false,
        })
    }
}
