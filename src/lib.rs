//! Tollgate: an OpenAI-compatible LLM gateway on Pingora.
//!
//! The map: `config` reads and validates the YAML; `state` builds what a config implies
//! (model `catalog`, upstream pools); `server` turns it into a Pingora server whose one
//! service, `gateway`, hands each request to `handler`; `upstream` forwards to real
//! endpoints or answers with the built-in mock; `openai` holds the wire format, `error`
//! the one error type, `respond` the gateway's own responses; `adapters` translate
//! between the client's wire format and a pool's (Anthropic's Messages API); `reload`
//! swaps in a new state on SIGHUP or a change of the config file. `cache` is the response
//! cache, `store` the shared state (Redis) behind limits and the cache, `tokens` counts
//! tokens (`o200k_base`) for context-window checks and for streams cut short, `metrics`
//! is the Prometheus registry.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod access_log;
pub mod adapters;
pub mod admin;
pub mod body;
pub mod cache;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod gateway;
pub mod handler;
pub mod header_deadline;
pub mod headers;
pub mod key_admin;
pub mod logging;
pub mod metrics;
pub mod monitor;
pub mod openai;
pub mod reload;
pub mod request_metrics;
pub mod respond;
pub mod route;
pub mod server;
pub mod state;
pub mod store;
pub mod tokens;
pub mod trace;
pub mod upstream;
pub mod weighted;
