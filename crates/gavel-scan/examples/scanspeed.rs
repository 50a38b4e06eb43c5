//! Throughput figures as the minimum over many short samples, for shared machines where other
//! work inflates criterion's means: the minimum is the run least disturbed by neighbours.
//!
//! `cargo run --release -p gavel-scan --example scanspeed [-- CORPORA_DIR]`
//!
//! Same inputs as `benches/throughput.rs`: the arena-hard prompts concatenated, its first KiB
//! for injection, its first 64 KiB streamed in 64-byte chunks (secrets and PII, then also
//! injection with the default window).

#[path = "common/corpus.rs"]
mod corpus;

use std::sync::Arc;
use std::time::Instant;

use gavel_scan::{
    ContentRole, ScanConfig, Scanners, StreamInjection, StreamScanner, INJECTION_STEP,
    INJECTION_WINDOW,
};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "../shared/corpora".into());
    let prompts = corpus::arena_hard_prompts(&dir)?;
    let text = prompts.join("\n\n");
    let kb = corpus::prefix(&text, 1024);
    let detectors = Scanners::new(&ScanConfig {
        injection: false,
        ..ScanConfig::default()
    })?;
    let injection = Scanners::new(&ScanConfig {
        secrets: false,
        pii: false,
        ..ScanConfig::default()
    })?;
    let mut out = Vec::new();

    let t = min_time(20, || {
        out.clear();
        detectors.scan(&text, ContentRole::Output, &mut out);
    });
    println!(
        "secrets + PII, arena-hard concatenated ({} bytes): {:.0} MB/s",
        text.len(),
        text.len() as f64 / t / 1e6
    );
    for (name, role) in [
        ("direct", ContentRole::User),
        ("indirect", ContentRole::Retrieved),
    ] {
        let t = min_time(50, || {
            out.clear();
            injection.scan(kb, role, &mut out);
        });
        println!(
            "injection score, {} bytes, {name}: {:.2} us",
            kb.len(),
            t * 1e6
        );
    }
    let shared = Arc::new(detectors);
    let stream_text = corpus::prefix(&text, 64 * 1024);
    let chunks = chunked(stream_text, 64);
    let t = min_time(5, || {
        let mut s = StreamScanner::new(shared.clone());
        for c in &chunks {
            s.push(c);
        }
        s.finish();
    });
    println!(
        "streaming, {} bytes in {} chunks of 64 bytes: {:.3} us per chunk",
        stream_text.len(),
        chunks.len(),
        t * 1e6 / chunks.len() as f64
    );
    let all = Arc::new(Scanners::new(&ScanConfig::default())?);
    let t = min_time(5, || {
        let mut s = StreamScanner::with_injection(all.clone(), StreamInjection::default());
        for c in &chunks {
            s.push(c);
        }
        s.finish();
    });
    println!(
        "streaming with injection (window {INJECTION_WINDOW}, step {INJECTION_STEP}), same chunks: {:.3} us per chunk",
        t * 1e6 / chunks.len() as f64
    );
    Ok(())
}

/// Minimum seconds per call over 300 samples of `per_sample` calls.
fn min_time(per_sample: u32, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..300 {
        let t = Instant::now();
        for _ in 0..per_sample {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / f64::from(per_sample));
    }
    best
}

fn chunked(text: &str, size: usize) -> Vec<&str> {
    let mut v = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = size.min(rest.len());
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        let (head, tail) = rest.split_at(end);
        v.push(head);
        rest = tail;
    }
    v
}
