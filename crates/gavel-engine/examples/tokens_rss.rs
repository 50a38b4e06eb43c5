#![expect(
    clippy::unwrap_used,
    reason = "a measuring tool: a missing corpus or /proc should stop it"
)]

//! Resident memory a token counter costs: VmRSS (from /proc/self/status) before counting, after
//! the first count with each encoding, and after counting every arena-hard prompt with it (which
//! touches most of the tables' pages). Run one counter per process, so neither sees the other's
//! pages:
//!
//! ```text
//! cargo run --release -p gavel-engine --example tokens_rss -- gavel
//! cargo run --release -p gavel-engine --example tokens_rss -- bpe-openai
//! ```

#[path = "common/arena_hard.rs"]
mod arena_hard;

use std::time::Instant;

use gavel_engine::Encoding;

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn vm_rss_kib() -> u64 {
    status_kib("VmRSS:")
}

/// VmRSS split into anonymous (heap: compiled regexes, memo) and file-backed (embedded tables).
fn split() -> String {
    format!(
        "anon {} KiB, file {} KiB",
        status_kib("RssAnon:"),
        status_kib("RssFile:")
    )
}

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "gavel".into());
    let prompts = arena_hard::prompts();
    let count = |encoding: Encoding, text: &str| -> u64 {
        match (which.as_str(), encoding) {
            ("bpe-openai", Encoding::O200k) => bpe_openai::o200k_base().count(text) as u64,
            ("bpe-openai", Encoding::Cl100k) => bpe_openai::cl100k_base().count(text) as u64,
            _ => encoding.count(text),
        }
    };
    println!("counter: {which}");
    let start = vm_rss_kib();
    println!(
        "{:<34} {:>8} KiB  ({})",
        "VmRSS before counting",
        start,
        split()
    );
    let mut before = start;
    for encoding in [Encoding::O200k, Encoding::Cl100k] {
        let t = Instant::now();
        let n = count(encoding, "hello world");
        let first = t.elapsed();
        let after_first = vm_rss_kib();
        let split_first = split();
        let total: u64 = prompts.iter().map(|p| count(encoding, p)).sum();
        let after_all = vm_rss_kib();
        let split_all = split();
        println!(
            "{:<34} {:>8} KiB  (+{} KiB; first count {:.2} ms, {n} tokens; {})",
            format!("after first {encoding:?} count"),
            after_first,
            after_first - before,
            first.as_secs_f64() * 1e3,
            split_first,
        );
        println!(
            "{:<34} {:>8} KiB  (+{} KiB over before {encoding:?}; {total} tokens; {})",
            format!("after {} {encoding:?} prompts", prompts.len()),
            after_all,
            after_all - before,
            split_all,
        );
        before = after_all;
    }
    println!("{:<34} {:>8} KiB", "total added", before - start);
}
