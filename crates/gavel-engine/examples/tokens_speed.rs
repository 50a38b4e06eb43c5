#![expect(
    clippy::unwrap_used,
    reason = "a measuring tool: a missing corpus should stop it"
)]

//! Counting speed, gavel's counter against bpe-openai, on the 500 arena-hard prompts (total time
//! over all prompts, best of several passes) and on a 1 MiB single piece.
//!
//! ```text
//! cargo run --release -p gavel-engine --example tokens_speed
//! ```
//!
//! "memo cleared per pass" clears gavel's per-thread memo before each pass over the prompts
//! (later prompts reuse earlier ones' chunks, as in a running gateway); "per prompt" clears it
//! before every prompt (cold). Run the first-count timing with `tokens_rss`, which starts cold.

#[path = "common/arena_hard.rs"]
mod arena_hard;

use std::time::{Duration, Instant};

use gavel_engine::Encoding;

const PASSES: usize = 15;

fn best_of(mut pass: impl FnMut() -> u64) -> (Duration, u64) {
    let mut best = Duration::MAX;
    let mut tokens = 0;
    for _ in 0..PASSES {
        let t = Instant::now();
        tokens = std::hint::black_box(pass());
        best = best.min(t.elapsed());
    }
    (best, tokens)
}

fn main() {
    let prompts = arena_hard::prompts();
    let bytes: usize = prompts.iter().map(String::len).sum();
    println!(
        "{} arena-hard prompts, {} bytes; best of {PASSES} passes",
        prompts.len(),
        bytes
    );
    println!(
        "{:<8} {:<34} {:>12} {:>10}",
        "encoding", "counter", "total µs", "tokens"
    );
    for (encoding, oracle) in [
        (Encoding::O200k, bpe_openai::o200k_base()),
        (Encoding::Cl100k, bpe_openai::cl100k_base()),
    ] {
        // Warm up both (tables, regex caches).
        prompts.iter().for_each(|p| {
            encoding.count(p);
            oracle.count(p.as_str());
        });
        let rows: [(&str, (Duration, u64)); 3] = [
            (
                "gavel, memo cleared per pass",
                best_of(|| {
                    Encoding::clear_memo();
                    prompts.iter().map(|p| encoding.count(p)).sum()
                }),
            ),
            (
                "gavel, memo cleared per prompt",
                best_of(|| {
                    prompts
                        .iter()
                        .map(|p| {
                            Encoding::clear_memo();
                            encoding.count(p)
                        })
                        .sum()
                }),
            ),
            (
                "bpe-openai",
                best_of(|| {
                    prompts
                        .iter()
                        .map(|p| oracle.count(p.as_str()) as u64)
                        .sum()
                }),
            ),
        ];
        for (name, (time, tokens)) in rows {
            println!(
                "{:<8} {:<34} {:>12.0} {:>10}",
                format!("{encoding:?}"),
                name,
                time.as_secs_f64() * 1e6,
                tokens
            );
        }
    }

    println!();
    println!("1 MiB single piece (one pre-tokenizer piece, no memo):");
    println!(
        "{:<8} {:<22} {:<12} {:>10} {:>10}",
        "encoding", "text", "counter", "ms", "tokens"
    );
    let mib = 1 << 20;
    let mut x: u32 = 0x2545_f491;
    let random: String = (0..mib)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    let texts = [("random a-z", random), ("'a' repeated", "a".repeat(mib))];
    for (encoding, oracle) in [
        (Encoding::O200k, bpe_openai::o200k_base()),
        (Encoding::Cl100k, bpe_openai::cl100k_base()),
    ] {
        for (label, text) in &texts {
            for (name, count) in [
                (
                    "gavel",
                    &(|t: &str| encoding.count(t)) as &dyn Fn(&str) -> u64,
                ),
                ("bpe-openai", &|t: &str| oracle.count(t) as u64),
            ] {
                let mut best = Duration::MAX;
                let mut tokens = 0;
                for _ in 0..3 {
                    let t = Instant::now();
                    tokens = std::hint::black_box(count(text));
                    best = best.min(t.elapsed());
                }
                println!(
                    "{:<8} {:<22} {:<12} {:>10.1} {:>10}",
                    format!("{encoding:?}"),
                    label,
                    name,
                    best.as_secs_f64() * 1e3,
                    tokens
                );
            }
        }
    }
}
