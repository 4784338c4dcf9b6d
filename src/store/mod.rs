//! Shared state for limits and budgets, as the engine builds it from the `state:`
//! section.
//!
//! This module owns the backends and their failure handling; what the counters mean
//! (windows, limits, budgets) belongs to the plugins that use [`tollgate_plugin::Store`].

pub mod redis;
#[cfg(test)]
mod tests;

pub use self::redis::{RedisOptions, RedisStore};
