//! The model catalog: public model names and aliases → the pool and upstream model id
//! that serve a request.

use std::collections::HashMap;

use crate::config::Config;
use crate::weighted::WeightedRing;

#[derive(Debug)]
pub struct Catalog {
    models: Vec<Entry>,
    /// Name or alias → index into `models`.
    by_name: HashMap<String, usize>,
}

#[derive(Debug)]
struct Entry {
    name: String,
    owned_by: String,
    targets: Vec<(usize, String)>,
    ring: WeightedRing,
}

/// Where one request for a model goes.
#[derive(Debug, Clone, Copy)]
pub struct Resolved<'a> {
    /// The canonical public name (the request may have used an alias).
    pub model: &'a str,
    /// Index of the pool in the gateway's pool list.
    pub pool: usize,
    pub upstream_model: &'a str,
}

impl Catalog {
    pub fn new(config: &Config) -> Self {
        let mut by_name = HashMap::new();
        let models = config
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| {
                by_name.insert(m.name.clone(), i);
                for a in &m.aliases {
                    by_name.insert(a.clone(), i);
                }
                let weights: Vec<u32> = m.targets.iter().map(|t| t.weight).collect();
                Entry {
                    name: m.name.clone(),
                    owned_by: m.owned_by.clone(),
                    targets: m
                        .targets
                        .iter()
                        .map(|t| (t.pool, t.upstream_model.clone()))
                        .collect(),
                    ring: WeightedRing::new(&weights),
                }
            })
            .collect();
        Catalog { models, by_name }
    }

    /// Picks the target for one request (weighted across the model's targets).
    pub fn resolve(&self, name: &str) -> Option<Resolved<'_>> {
        let entry = &self.models[*self.by_name.get(name)?];
        let (pool, upstream_model) = entry.targets.get(entry.ring.next())?;
        Some(Resolved {
            model: &entry.name,
            pool: *pool,
            upstream_model,
        })
    }

    /// `(id, owned_by)` of one model, by name or alias.
    pub fn describe(&self, name: &str) -> Option<(&str, &str)> {
        let entry = &self.models[*self.by_name.get(name)?];
        Some((&entry.name, &entry.owned_by))
    }

    /// `(id, owned_by)` of every model, aliases not repeated.
    pub fn list(&self) -> impl Iterator<Item = (&str, &str)> {
        self.models
            .iter()
            .map(|m| (m.name.as_str(), m.owned_by.as_str()))
    }
}
