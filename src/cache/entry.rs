//! A cached answer, and its byte form for a backend outside the process (Redis).
//!
//! The byte form is `TGC1`, an xxh3-64 of the rest, then the entry in postcard: a value
//! that was cut, corrupted or written by something else fails [`Entry::decode`] rather
//! than being served.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tollgate_plugin::TokenUsage;

use super::key::CacheKey;

const MAGIC: &[u8; 4] = b"TGC1";

/// One answer, as the client of the request that filled it received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The full key: the memory backend indexes by a 64-bit hash of it.
    pub key: [u8; 32],
    pub expires_at_ms: u64,
    /// The public model that answered (after fallbacks).
    pub served_model: String,
    /// The upstream's usage: what a hit saves.
    pub usage: Option<Usage>,
    pub answer: Answer,
}

/// The answer's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// A JSON response body, byte for byte.
    Json(Bytes),
    /// The `data` of each event of a stream that ended with `[DONE]` (not included),
    /// the usage-only chunk included.
    Events(Vec<Bytes>),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
    pub cached: u64,
    pub reasoning: u64,
}

impl From<TokenUsage> for Usage {
    fn from(u: TokenUsage) -> Self {
        Usage {
            prompt: u.prompt,
            completion: u.completion,
            cached: u.cached,
            reasoning: u.reasoning,
        }
    }
}

impl From<Usage> for TokenUsage {
    fn from(u: Usage) -> Self {
        TokenUsage {
            prompt: u.prompt,
            completion: u.completion,
            cached: u.cached,
            reasoning: u.reasoning,
        }
    }
}

/// Why stored bytes are not an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl Answer {
    pub fn len(&self) -> usize {
        match self {
            Answer::Json(b) => b.len(),
            Answer::Events(events) => events.iter().map(Bytes::len).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_stream(&self) -> bool {
        matches!(self, Answer::Events(_))
    }
}

impl Entry {
    /// Bytes held in memory, roughly: the answer plus bookkeeping.
    pub fn size(&self) -> usize {
        let per_event = match &self.answer {
            Answer::Json(_) => 0,
            Answer::Events(e) => e.len() * std::mem::size_of::<Bytes>(),
        };
        std::mem::size_of::<Entry>() + self.served_model.len() + self.answer.len() + per_event
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_at_ms
    }

    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        let payload = postcard::to_stdvec(self)?;
        let mut out = Vec::with_capacity(12 + payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// The entry in `bytes`, which must be the one stored for `key`.
    pub fn decode(bytes: &[u8], key: &CacheKey) -> Result<Entry, DecodeError> {
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or(DecodeError("not a cache entry (no TGC1 header)"))?;
        let (sum, payload) = rest
            .split_first_chunk::<8>()
            .ok_or(DecodeError("cache entry cut short"))?;
        if u64::from_le_bytes(*sum) != xxhash_rust::xxh3::xxh3_64(payload) {
            return Err(DecodeError("cache entry checksum mismatch"));
        }
        let entry: Entry = postcard::from_bytes(payload)
            .map_err(|_| DecodeError("cache entry does not decode"))?;
        if entry.key != key.0 {
            return Err(DecodeError("cache entry stored under another key"));
        }
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(answer: Answer) -> Entry {
        Entry {
            key: [7; 32],
            expires_at_ms: 1_000,
            served_model: "gpt-4o".into(),
            usage: Some(Usage {
                prompt: 3,
                completion: 5,
                cached: 1,
                reasoning: 0,
            }),
            answer,
        }
    }

    #[test]
    fn round_trips_both_shapes() {
        for answer in [
            Answer::Json(Bytes::from_static(br#"{"id":"x","choices":[]}"#)),
            Answer::Events(vec![
                Bytes::from_static(b"{\"a\":1}"),
                Bytes::from_static("{\"b\":\"\u{e9}\"}".as_bytes()),
            ]),
        ] {
            let e = entry(answer);
            assert_eq!(
                Entry::decode(&e.encode().unwrap(), &CacheKey([7; 32])).unwrap(),
                e
            );
        }
    }

    #[test]
    fn broken_bytes_never_decode() {
        let good = entry(Answer::Json(Bytes::from_static(b"{}")))
            .encode()
            .unwrap();
        let key = CacheKey([7; 32]);
        assert!(Entry::decode(&good[..good.len() - 1], &key).is_err());
        assert!(Entry::decode(&good[..10], &key).is_err());
        assert!(Entry::decode(b"", &key).is_err());
        assert!(Entry::decode(b"{\"json\":true}", &key).is_err());
        for i in 4..good.len() {
            let mut flipped = good.clone();
            flipped[i] ^= 0x20;
            assert!(Entry::decode(&flipped, &key).is_err(), "byte {i} flipped");
        }
        assert_eq!(
            Entry::decode(&good, &CacheKey([8; 32])),
            Err(DecodeError("cache entry stored under another key"))
        );
    }
}
