//! Cost of monitoring on the hot path: recording one decision and one outcome into the current
//! bucket, and computing signals and checks over a full window.

use std::collections::BTreeMap;

use criterion::{black_box, criterion_group, criterion_main, Criterion};

use gavel_monitor::{checks, signals, Baseline, Config, FeatureValue, Outcome, Series};

fn outcome(i: u64) -> Outcome {
    Outcome {
        decision_id: None,
        executed: true,
        latency_ms: Some(20.0 + (i % 50) as f64),
        spend_usd_micros: 120,
        features: vec![
            (
                "prompt_tokens".into(),
                FeatureValue::Number((200 + i % 300) as f64),
            ),
            (
                "output_tokens".into(),
                FeatureValue::Number((50 + i % 90) as f64),
            ),
        ],
        ..Default::default()
    }
}

fn hot_path(c: &mut Criterion) {
    let cfg = Config::default();
    let mut series = Series::new(cfg.bucket_ms, cfg.window_ms);
    let mut i = 0u64;
    c.bench_function("record decision + outcome (one bucket)", |b| {
        b.iter(|| {
            i += 1;
            let bucket = series.at(black_box(1_000_000));
            bucket.record_decision(
                "dec_01JD0000000000000000000000",
                false,
                i.is_multiple_of(10),
            );
            bucket.record_outcome(black_box(&outcome(i)));
        })
    });

    let mut series = Series::new(cfg.bucket_ms, cfg.window_ms);
    let mut baseline = Baseline::default();
    for i in 0..10_000u64 {
        let at = (i as i64) * cfg.window_ms / 10_000;
        let b = series.at(at);
        b.record_decision("d", false, false);
        let o = outcome(i);
        b.record_outcome(&o);
        for (name, value) in &o.features {
            baseline
                .features
                .entry(name.clone())
                .or_default()
                .add(value);
        }
    }
    let thresholds: BTreeMap<String, f64> = [
        ("latency", 500.0),
        ("drift", 0.2),
        ("abuse", 0.1),
        ("error", 0.05),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), v))
    .collect();
    c.bench_function("signals + checks over a 30-bucket window", |b| {
        b.iter(|| {
            let w = series.window(0, cfg.window_ms);
            let s = signals(&w, Some(&baseline), &cfg);
            black_box(checks(&s, &thresholds, &cfg))
        })
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
