//! Counting the tokens of a text in the `o200k_base` encoding, from a vocabulary table of
//! 2.2 MiB built into the binary (by build.rs, out of tiktoken-rs) and a 1.3 MiB hash
//! table made from it at the first count.
//!
//! The vocabulary, the split pattern and the merge rule are tiktoken's; only the table
//! differs. tiktoken-rs's `CoreBPE` parses a 3.6 MB base64 file at start and keeps every
//! token three times (an encoder map, a decoder map and a sorted list, each entry its own
//! allocation), about 30 MiB, where counting needs one lookup from bytes to rank. Here the
//! tokens' bytes sit end to end in the binary, and a hash table of ranks points into them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::LazyLock;

use fancy_regex::Regex;
use hashbrown::HashTable;
use xxhash_rust::xxh3::xxh3_64;

/// A token's number in the vocabulary (merges take the lowest first).
type Rank = u32;

/// `o200k_base`'s ordinary tokens, in rank order, end to end.
static O200K_BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/o200k.bytes"));
/// Where each of them ends in `O200K_BYTES`, as little-endian u32s.
static O200K_ENDS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/o200k.ends"));
static O200K_PATTERN: &str = include_str!(concat!(env!("OUT_DIR"), "/o200k.pattern"));

/// `None` if the pattern did not compile or the table is inconsistent (logged once;
/// counts are estimated then).
static O200K: LazyLock<Option<Encoding>> = LazyLock::new(|| {
    Encoding::new(O200K_PATTERN, O200K_BYTES, O200K_ENDS)
        .inspect_err(|e| {
            tracing::error!(error = %e, "The o200k_base encoding did not load; counts are estimated");
        })
        .ok()
});

/// Tokens of `text` in `o200k_base`, as tiktoken's `encode_ordinary(text).len()` counts
/// them; `None` if the encoding is not there.
pub fn count_o200k(text: &str) -> Option<usize> {
    O200K.as_ref().map(|encoding| encoding.count(text))
}

/// A byte-level BPE encoding: the pattern that splits text into pieces, and the rank of
/// every token.
struct Encoding {
    pattern: Regex,
    /// Every token's bytes, in rank order, end to end.
    bytes: &'static [u8],
    /// Where each rank's bytes end in `bytes` (they start where the rank before ends).
    ends: Box<[u32]>,
    /// Ranks, found by the hash of their bytes.
    ranks: HashTable<Rank>,
}

impl Encoding {
    /// The encoding that splits text with `pattern` and whose rank `r` is the `r`-th
    /// token of `bytes`, ending at the `r`-th of `ends` (little-endian u32s).
    fn new(pattern: &str, bytes: &'static [u8], ends: &[u8]) -> Result<Encoding, String> {
        let pattern = Regex::new(pattern).map_err(|e| e.to_string())?;
        let ends: Box<[u32]> = ends
            .chunks_exact(4)
            .map(|end| u32::from_le_bytes([end[0], end[1], end[2], end[3]]))
            .collect();
        let consistent =
            ends.is_sorted() && ends.last().map(|&end| end as usize) == Some(bytes.len());
        if !consistent {
            return Err("the vocabulary table is inconsistent".into());
        }
        let mut encoding = Encoding {
            pattern,
            bytes,
            ends,
            ranks: HashTable::new(),
        };
        let mut ranks = HashTable::with_capacity(encoding.ends.len());
        for rank in 0..encoding.ends.len() as Rank {
            let hash = xxh3_64(encoding.token(rank));
            ranks.insert_unique(hash, rank, |&r| xxh3_64(encoding.token(r)));
        }
        encoding.ranks = ranks;
        Ok(encoding)
    }

    fn token(&self, rank: Rank) -> &[u8] {
        let end = self.ends[rank as usize] as usize;
        let start = match rank {
            0 => 0,
            _ => self.ends[rank as usize - 1] as usize,
        };
        &self.bytes[start..end]
    }

    fn rank(&self, bytes: &[u8]) -> Option<Rank> {
        self.ranks
            .find(xxh3_64(bytes), |&r| self.token(r) == bytes)
            .copied()
    }

    fn count(&self, text: &str) -> usize {
        let mut tokens = 0;
        let mut counted = 0;
        for piece in self.pattern.find_iter(text) {
            match piece {
                Ok(piece) => {
                    tokens += self.piece_tokens(piece.as_str().as_bytes());
                    counted = piece.end();
                }
                Err(e) => {
                    // The pattern's look-ahead backtracks; past its limit the rest of the
                    // text is estimated, as unreadable input is elsewhere.
                    tracing::warn!(error = %e, "Token count: the text could not be split; the rest is estimated");
                    let rest = super::bytes_estimate(&text.as_bytes()[counted..]);
                    return tokens + rest as usize;
                }
            }
        }
        tokens
    }

    /// Tokens of one piece: one if it is a token, else what is left after merging its
    /// bytes pairwise, the lowest-ranked adjacent pair first (leftmost among equals), for
    /// as long as some adjacent pair is a token. A heap keeps it O(n log n) on pieces of
    /// any length (a run of one letter is one piece).
    fn piece_tokens(&self, piece: &[u8]) -> usize {
        let n = piece.len();
        if n <= 1 {
            return n;
        }
        if self.rank(piece).is_some() {
            return 1;
        }
        // The parts, as a linked list over their start offsets; `pair[i]` is the rank of
        // the part starting at `i` joined with the next one (`Rank::MAX`: not a token, or
        // `i` no longer starts a part).
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut pair = vec![Rank::MAX; n];
        let mut heap = BinaryHeap::new();
        let consider =
            |pair: &mut [Rank], heap: &mut BinaryHeap<Reverse<(Rank, usize)>>, start, end| {
                let rank = piece
                    .get(start..end)
                    .and_then(|joined| self.rank(joined))
                    .unwrap_or(Rank::MAX);
                pair[start] = rank;
                if rank != Rank::MAX {
                    heap.push(Reverse((rank, start)));
                }
            };
        for i in 0..n - 1 {
            consider(&mut pair, &mut heap, i, i + 2);
        }
        let mut parts = n;
        while let Some(Reverse((rank, left))) = heap.pop() {
            if pair[left] != rank {
                continue; // superseded by a later merge
            }
            let right = next[left];
            let end = next[right];
            next[left] = end;
            if end < n {
                prev[end] = left;
            }
            pair[right] = Rank::MAX;
            parts -= 1;
            // The merged part joined with the one after it (none after the last part).
            let after = next.get(end).map_or(n + 1, |&after| after);
            consider(&mut pair, &mut heap, left, after);
            if left > 0 {
                consider(&mut pair, &mut heap, prev[left], end);
            }
        }
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tiktoken-rs's own count, the reference.
    fn reference(text: &str) -> usize {
        tiktoken_rs::o200k_base_singleton()
            .encode_ordinary(text)
            .len()
    }

    fn assert_counts_like_tiktoken(text: &str) {
        assert_eq!(
            count_o200k(text),
            Some(reference(text)),
            "{:?}…",
            &text[..text.floor_char_boundary(80)]
        );
    }

    #[test]
    fn counts_as_tiktoken_on_prose_code_and_scripts() {
        for text in [
            "",
            "a",
            "Hello world",
            "  leading and trailing spaces   \n\n\t",
            "The quick brown fox jumps over the lazy dog. 1234567890 3.14159",
            "fn main() { println!(\"{}\", x.iter().map(|v| v * 2).sum::<u64>()); }",
            "Schöne Grüße aus Köln! Ça va très bien, merci.",
            "日本語のテキストとひらがなとカタカナ。中文文本也在这里。",
            "Привет, как дела? Ελληνικά κείμενα. עברית ועוד. العربية أيضا.",
            "emoji 🤖🚀👍🏽 and 👨‍👩‍👧‍👦 families",
            "I'm you're they'll WE'VE it's",
            "\u{feff}zero\u{200b}width\u{0301} marks",
        ] {
            assert_counts_like_tiktoken(text);
        }
        assert_counts_like_tiktoken(include_str!("mod.rs"));
        assert_counts_like_tiktoken(include_str!("../../README.md"));
    }

    #[test]
    fn long_pieces_merge_like_tiktoken() {
        // One piece each, longer than any token: the merge itself decides the count.
        assert_counts_like_tiktoken(&"a".repeat(10_000));
        assert_counts_like_tiktoken(&"ab".repeat(3_000));
        assert_counts_like_tiktoken(&"é".repeat(2_000));
        assert_counts_like_tiktoken(&"🤖".repeat(500));
        assert_counts_like_tiktoken(&"Supercalifragilisticexpialidocious".repeat(50));
    }

    #[test]
    fn random_text_counts_like_tiktoken() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20 {
            let len = rng.usize(1..3_000);
            let text: String = (0..len)
                .map(|_| match rng.u8(0..4) {
                    0 => rng.alphanumeric(),
                    1 => [' ', '\n', '.', ',', '\'', '-'][rng.usize(0..6)],
                    _ => rng.char('\u{a1}'..'\u{2ffff}'),
                })
                .collect();
            assert_counts_like_tiktoken(&text);
        }
    }
}
