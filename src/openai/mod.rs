//! The OpenAI wire format: what the gateway reads from requests and the few response
//! bodies it writes itself.

mod models;
#[cfg(test)]
mod properties;
mod request;
mod sse;

pub use models::{model_list, model_object};
pub use request::{Api, InferenceRequest};
pub use sse::{
    PromptDetails, SseParser, Usage, append_generated_text, is_usage_only_chunk, put_event,
};

/// Seconds since the Unix epoch, for `created` fields.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
