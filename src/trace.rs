//! W3C trace context: the request's `traceparent` is taken when valid, else one is
//! started; upstream attempts carry the same trace with the gateway's own span id.

use http::HeaderMap;

/// A request's trace: its id, the gateway's span, and the sampling flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// 16 lower-case hex digits: the gateway's span, the parent of upstream requests.
    pub span_id: String,
    pub flags: u8,
}

impl Trace {
    /// The client's trace when its `traceparent` is valid, continued with a new span;
    /// else a new, sampled trace.
    pub fn from_headers(headers: &HeaderMap) -> Trace {
        let given = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(parse);
        let span_id = random_hex::<1>();
        match given {
            Some((trace_id, flags)) => Trace {
                trace_id,
                span_id,
                flags,
            },
            None => Trace {
                trace_id: random_hex::<2>(),
                span_id,
                flags: 1,
            },
        }
    }

    /// The `traceparent` header for an upstream request.
    pub fn traceparent(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        out.push_str(&self.trace_id);
        out.push('-');
        out.push_str(&self.span_id);
        out.push('-');
        out.push_str(&hex::encode([self.flags]));
        out
    }
}

/// `(trace id, flags)` of a valid version-00 `traceparent` (future versions are read by
/// their first four fields, as the spec says).
fn parse(value: &str) -> Option<(String, u8)> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    if !valid {
        return None;
    }
    Some((trace_id.to_owned(), u8::from_str_radix(flags, 16).ok()?))
}

/// `N` random 64-bit words in hex, never all zero (an all-zero id is invalid).
fn random_hex<const N: usize>() -> String {
    let words: [[u8; 8]; N] = std::array::from_fn(|_| fastrand::u64(1..).to_be_bytes());
    hex::encode(words.as_flattened())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> Trace {
        let mut h = HeaderMap::new();
        h.insert("traceparent", value.parse().unwrap());
        Trace::from_headers(&h)
    }

    #[test]
    fn a_new_trace_reads_back_from_its_traceparent() {
        let t = Trace::from_headers(&HeaderMap::new());
        assert_eq!(parse(&t.traceparent()), Some((t.trace_id.clone(), 1)));
        assert!(
            t.span_id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }

    #[test]
    fn a_valid_traceparent_is_continued() {
        let t = with("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(t.span_id, "00f067aa0ba902b7", "the gateway's own span");
        assert_eq!(t.span_id.len(), 16);
        assert_eq!(t.flags, 1);
        let header = t.traceparent();
        assert!(header.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(header.ends_with("-01"));
        assert_eq!(header.len(), 55);
    }

    #[test]
    fn an_invalid_one_starts_a_new_trace() {
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            let t = with(bad);
            assert_ne!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad:?}");
            assert_eq!(t.trace_id.len(), 32);
            assert_eq!(t.flags, 1);
        }
        assert_eq!(Trace::from_headers(&HeaderMap::new()).trace_id.len(), 32);
    }
}
