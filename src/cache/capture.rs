//! Keeping a copy of an answer as it goes to the client, to store it once complete.

use bytes::Bytes;

use super::entry::Answer;

/// What was kept of an answer so far: given up on once it passes `limit` bytes.
#[derive(Debug)]
pub struct Capture {
    limit: usize,
    size: usize,
    answer: Option<Answer>,
    complete: bool,
    too_large: bool,
}

impl Capture {
    pub fn new(limit: usize) -> Self {
        Capture {
            limit,
            size: 0,
            answer: None,
            complete: false,
            too_large: false,
        }
    }

    /// A whole JSON body (a non-stream answer): complete at once.
    pub fn json(&mut self, body: Bytes) {
        if self.grow(body.len()) {
            self.answer = Some(Answer::Json(body));
            self.complete = true;
        }
    }

    /// The `data` of one stream event (not `[DONE]`).
    pub fn event(&mut self, data: &[u8]) {
        if !self.grow(data.len()) {
            return;
        }
        match &mut self.answer {
            Some(Answer::Events(events)) => events.push(Bytes::copy_from_slice(data)),
            _ => self.answer = Some(Answer::Events(vec![Bytes::copy_from_slice(data)])),
        }
    }

    /// The stream ended with `[DONE]` and went to the client whole.
    pub fn stream_done(&mut self) {
        self.complete = !self.too_large;
    }

    /// Whether the answer passed the limit (and so was dropped).
    pub fn too_large(&self) -> bool {
        self.too_large
    }

    /// The answer, if it is whole and within the limit.
    pub fn take(&mut self) -> Option<Answer> {
        if self.complete && !self.too_large {
            self.answer.take()
        } else {
            None
        }
    }

    fn grow(&mut self, n: usize) -> bool {
        if self.too_large {
            return false;
        }
        self.size += n;
        if self.size > self.limit {
            self.too_large = true;
            self.answer = None;
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_kept_only_when_done_and_small_enough() {
        let mut c = Capture::new(10);
        c.event(b"abc");
        assert_eq!(c.take(), None, "not done yet");
        c.event(b"def");
        c.stream_done();
        assert_eq!(
            c.take(),
            Some(Answer::Events(vec![Bytes::from("abc"), Bytes::from("def")]))
        );

        let mut c = Capture::new(5);
        c.event(b"abc");
        c.event(b"def");
        c.stream_done();
        assert!(c.too_large());
        assert_eq!(c.take(), None);

        let mut c = Capture::new(5);
        c.json(Bytes::from("{\"a\":1}"));
        assert_eq!(c.take(), None);
        let mut c = Capture::new(50);
        c.json(Bytes::from("{\"a\":1}"));
        assert_eq!(c.take(), Some(Answer::Json(Bytes::from("{\"a\":1}"))));
    }
}
