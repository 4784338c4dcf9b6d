//! Writes the `o200k_base` vocabulary, read out of tiktoken-rs at build time, in the
//! compact form `src/tokens/bpe.rs` embeds: so the gateway neither parses the 3.6 MB
//! base64 rank file at run time nor holds tiktoken-rs's three copies of it.
//!
//! In `OUT_DIR`: `o200k.bytes`, every ordinary token's bytes end to end in rank order;
//! `o200k.ends`, where each ends in them (u32, little-endian); `o200k.pattern`, the
//! pattern that splits text into pieces.

use std::collections::HashSet;
use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bpe = tiktoken_rs::o200k_base().expect("tiktoken-rs's o200k_base loads");
    let special: HashSet<&str> = bpe.special_tokens();

    // The ordinary ranks are dense from 0; the special tokens come after them.
    let mut bytes = Vec::new();
    let mut ends = Vec::new();
    for rank in 0.. {
        let Ok(token) = bpe.decode_bytes(&[rank]) else {
            break;
        };
        if std::str::from_utf8(&token).is_ok_and(|t| special.contains(t)) {
            break;
        }
        bytes.extend_from_slice(&token);
        let end = u32::try_from(bytes.len()).expect("a vocabulary under 4 GiB");
        ends.extend_from_slice(&end.to_le_bytes());
    }
    assert!(ends.len() / 4 > 100_000, "o200k_base has its 200k tokens");
    std::fs::write(out.join("o200k.bytes"), bytes).expect("OUT_DIR is writable");
    std::fs::write(out.join("o200k.ends"), ends).expect("OUT_DIR is writable");
    std::fs::write(out.join("o200k.pattern"), tiktoken_rs::O200K_BASE_PAT_STR)
        .expect("OUT_DIR is writable");
}
