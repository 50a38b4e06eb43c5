//! A full scan (secrets, PII, injection) of 1 KiB of user text, timed hot (back to back) and cold
//! (after writing 64 MiB to push the scanners' tables out of the caches, as an idle gateway's
//! next request finds them). Medians of 3,000 hot and 300 cold scans.
//!
//! ```text
//! cargo run --release -p gavel-scan --example coldscan
//! ```
//!
//! The text is the first KiB of the arena-hard prompts concatenated (`../shared/corpora`, or
//! `$GAVEL_CORPORA`).

use std::time::Instant;

use gavel_scan::{ContentRole, ScanConfig, Scanners};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn median(mut nanos: Vec<u128>) -> u128 {
    nanos.sort_unstable();
    nanos.get(nanos.len() / 2).copied().unwrap_or_default()
}

fn main() -> Res<()> {
    let dir = std::env::var("GAVEL_CORPORA").unwrap_or_else(|_| "../shared/corpora".into());
    let raw = std::fs::read_to_string(format!("{dir}/benign/arena_hard_v0.1_questions.jsonl"))?;
    let mut prompts = Vec::new();
    for line in raw.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if let Some(p) = v.get("prompt").and_then(|p| p.as_str()) {
            prompts.push(p.to_owned());
        }
    }
    let text = prompts.join("\n\n");
    let mut end = 1024.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let kb = text.get(..end).unwrap_or_default();
    let scanners = Scanners::new(&ScanConfig::default())?;
    let mut out = Vec::new();
    let mut scan = || {
        out.clear();
        let started = Instant::now();
        scanners.scan(kb, ContentRole::User, &mut out);
        started.elapsed().as_nanos()
    };
    let hot: Vec<u128> = (0..3000).map(|_| scan()).collect();
    let mut flush = vec![0u8; 64 << 20];
    let cold: Vec<u128> = (0..300u32)
        .map(|round| {
            for byte in flush.iter_mut().step_by(64) {
                *byte = byte.wrapping_add(round.to_le_bytes()[0]);
            }
            scan()
        })
        .collect();
    println!(
        "full scan of {} bytes: hot median {} ns, cold median {} ns (flush checksum {})",
        kb.len(),
        median(hot),
        median(cold),
        flush
            .iter()
            .step_by(4096)
            .map(|&b| u64::from(b))
            .sum::<u64>()
    );
    Ok(())
}
