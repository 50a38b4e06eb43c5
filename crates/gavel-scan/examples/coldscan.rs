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

#[path = "common/corpus.rs"]
mod corpus;

use std::time::Instant;

use gavel_scan::{ContentRole, ScanConfig, Scanners};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn median(mut nanos: Vec<u128>) -> u128 {
    nanos.sort_unstable();
    nanos.get(nanos.len() / 2).copied().unwrap_or_default()
}

fn main() -> Res<()> {
    let dir = std::env::var("GAVEL_CORPORA").unwrap_or_else(|_| "../shared/corpora".into());
    let prompts = corpus::arena_hard_prompts(&dir)?;
    let text = prompts.join("\n\n");
    let kb = corpus::prefix(&text, 1024);
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
