//! The response cache (exact match). For now its key: what identifies an answer.

pub mod key;
