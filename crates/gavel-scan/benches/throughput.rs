//! Throughput of the scanners (SPEC section 11 figures).
//!
//! `cargo bench -p gavel-scan --bench throughput`
//!
//! Text: the arena-hard prompts concatenated (typical English and code from real users), read
//! from `../shared/corpora` or `$GAVEL_CORPORA`.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "bench setup: a missing corpus or a scanner that cannot build must stop the bench"
)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gavel_scan::{ContentRole, ScanConfig, Scanners, StreamInjection, StreamScanner};

fn corpus() -> String {
    let dir = std::env::var("GAVEL_CORPORA").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/corpora").to_string()
    });
    let path = format!("{dir}/benign/arena_hard_v0.1_questions.jsonl");
    let raw = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    raw.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("prompt").and_then(|p| p.as_str()).map(str::to_owned))
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn prefix(text: &str, n: usize) -> &str {
    let mut end = n.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn benches(c: &mut Criterion) {
    let text = corpus();
    let detectors = Scanners::new(&ScanConfig {
        injection: false,
        ..ScanConfig::default()
    })
    .unwrap();
    let mut out = Vec::with_capacity(64);

    let mut g = c.benchmark_group("secrets_pii");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("arena_hard_concatenated", |b| {
        b.iter(|| {
            out.clear();
            detectors.scan(&text, ContentRole::Output, &mut out);
            out.len()
        })
    });
    g.finish();

    let injection = Scanners::new(&ScanConfig {
        secrets: false,
        pii: false,
        ..ScanConfig::default()
    })
    .unwrap();
    let all = Arc::new(Scanners::new(&ScanConfig::default()).unwrap());
    let kb = prefix(&text, 1024);
    let mut g = c.benchmark_group("injection");
    g.throughput(Throughput::Bytes(kb.len() as u64));
    for (name, role) in [
        ("direct_1k", ContentRole::User),
        ("indirect_1k", ContentRole::Retrieved),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                injection.scan(kb, role, &mut out).injection_score
            })
        });
    }
    g.bench_function("full_scan_user_1k", |b| {
        b.iter(|| {
            out.clear();
            all.scan(kb, ContentRole::User, &mut out).injection_score
        })
    });
    g.finish();

    let shared = Arc::new(detectors);
    let stream_text = prefix(&text, 64 * 1024);
    let mut g = c.benchmark_group("streaming");
    for chunk in [64usize, 1024] {
        let chunks: Vec<&str> = {
            let mut v = Vec::new();
            let mut rest = stream_text;
            while !rest.is_empty() {
                let p = prefix(
                    rest,
                    chunk.max(rest.chars().next().map_or(1, char::len_utf8)),
                );
                v.push(p);
                rest = &rest[p.len()..];
            }
            v
        };
        g.throughput(Throughput::Elements(chunks.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("push_per_chunk", chunk),
            &chunks,
            |b, chunks| {
                b.iter(|| {
                    let mut s = StreamScanner::new(shared.clone());
                    let mut released = 0;
                    for c in chunks {
                        released += s.push(c).released.len();
                    }
                    released + s.finish().released.len()
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("push_per_chunk_with_injection", chunk),
            &chunks,
            |b, chunks| {
                b.iter(|| {
                    let mut s =
                        StreamScanner::with_injection(all.clone(), StreamInjection::default());
                    let mut released = 0;
                    for c in chunks {
                        released += s.push(c).released.len();
                    }
                    released + s.finish().released.len()
                })
            },
        );
    }
    g.finish();
}

criterion_group!(scan, benches);
criterion_main!(scan);
