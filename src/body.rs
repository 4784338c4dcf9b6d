//! Gathering a body read in chunks, request or response, with no copy when it came in one
//! chunk (the common case).

use bytes::{Bytes, BytesMut};

#[derive(Debug, Default)]
pub struct BodyBuf {
    first: Option<Bytes>,
    /// Set from the second chunk on.
    rest: Option<BytesMut>,
    /// Expected total size, to allocate once when a second chunk arrives.
    size_hint: usize,
}

impl BodyBuf {
    pub fn with_size_hint(size_hint: usize) -> Self {
        BodyBuf {
            size_hint,
            ..Self::default()
        }
    }

    /// Bytes gathered so far.
    pub fn len(&self) -> usize {
        self.first.as_ref().map_or(0, Bytes::len) + self.rest.as_ref().map_or(0, BytesMut::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push(&mut self, chunk: Bytes) {
        if let Some(buf) = &mut self.rest {
            buf.extend_from_slice(&chunk);
            return;
        }
        match self.first.take() {
            None => self.first = Some(chunk),
            // The first chunk moves into `rest`: counted once.
            Some(f) => {
                let mut buf = BytesMut::with_capacity(self.size_hint.max(f.len() + chunk.len()));
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&chunk);
                self.rest = Some(buf);
            }
        }
    }

    pub fn finish(self) -> Bytes {
        match self.rest {
            Some(buf) => buf.freeze(),
            None => self.first.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_chunk_is_kept_and_more_are_joined() {
        let one = Bytes::from_static(b"abc");
        let mut b = BodyBuf::default();
        b.push(one.clone());
        assert_eq!(b.len(), 3);
        assert_eq!(b.finish().as_ptr(), one.as_ptr(), "no copy");
        let mut b = BodyBuf::with_size_hint(6);
        for (i, part) in ["ab", "cd", "ef"].into_iter().enumerate() {
            b.push(Bytes::from(part));
            assert_eq!(b.len(), 2 * (i + 1), "every byte counted once");
        }
        assert_eq!(b.finish(), "abcdef");
        assert!(BodyBuf::default().finish().is_empty());
    }
}
