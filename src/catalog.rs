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
    fallbacks: Vec<usize>,
    context_window: Option<u64>,
}

/// One place a request may go.
#[derive(Debug, Clone, Copy)]
pub struct Resolved<'a> {
    /// The canonical public name (the request may have used an alias, or this may be a
    /// fallback).
    pub model: &'a str,
    /// Index of the pool in the gateway's pool list.
    pub pool: usize,
    pub upstream_model: &'a str,
    pub context_window: Option<u64>,
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
                    fallbacks: m.fallbacks.clone(),
                    context_window: m.context_window,
                }
            })
            .collect();
        Catalog { models, by_name }
    }

    /// Everywhere a request for `name` may go, in the order to try: the model's targets
    /// (the weighted pick first, then the others in config order), then each fallback
    /// model's the same way. `None` for an unknown model.
    pub fn candidates(&self, name: &str) -> Option<Vec<Resolved<'_>>> {
        let first = *self.by_name.get(name)?;
        let entry = &self.models[first];
        let mut out = Vec::with_capacity(entry.targets.len() + entry.fallbacks.len());
        for &m in std::iter::once(&first).chain(&entry.fallbacks) {
            let e = &self.models[m];
            let picked = e.ring.next();
            let order =
                std::iter::once(picked).chain((0..e.targets.len()).filter(|&i| i != picked));
            for i in order {
                if let Some((pool, upstream_model)) = e.targets.get(i) {
                    out.push(Resolved {
                        model: &e.name,
                        pool: *pool,
                        upstream_model,
                        context_window: e.context_window,
                    });
                }
            }
        }
        Some(out)
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
