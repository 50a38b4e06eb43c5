//! Signals of one deployment over a window, and their checks against an approval's thresholds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bucket::Bucket;
use crate::sketch::Feature;
use crate::stats::{binned, fairness, js_distance, psi, Fairness};

/// How signals are gathered and when they count (the contract's `monitoring` section).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// The sliding window signals are computed over.
    pub window_ms: i64,
    /// The granularity of the window (and of what is stored).
    pub bucket_ms: i64,
    /// Fewer observations than this in the window: the signal is reported, not checked.
    pub min_samples: u64,
    /// Bins for numeric drift: the baseline's quantiles (deciles by default).
    pub drift_bins: usize,
    /// Values a feature needs in the window, and in the baseline, before drift is checked.
    pub drift_min_samples: u64,
    /// Outcomes a group needs before it enters the fairness comparison.
    pub min_group_size: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            window_ms: 5 * 60_000,
            bucket_ms: 10_000,
            min_samples: 20,
            drift_bins: 10,
            drift_min_samples: 50,
            min_group_size: 30,
        }
    }
}

/// The distributions drift is measured against, recorded with an approval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub features: BTreeMap<String, Feature>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub count: u64,
}

/// Drift of one feature against the baseline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureDrift {
    pub feature: String,
    pub window_n: u64,
    pub baseline_n: u64,
    /// None when either side has fewer than `drift_min_samples` values.
    pub psi: Option<f64>,
    pub js_distance: Option<f64>,
}

/// Everything measured about one deployment over one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Signals {
    pub decisions: u64,
    pub executions: u64,
    pub latency_ms: Option<Latency>,
    pub error_rate: Option<f64>,
    /// Mean of feedback scores and of labelled predictions (1 right, 0 wrong).
    pub accuracy: Option<f64>,
    pub accuracy_samples: u64,
    pub abuse_rate: Option<f64>,
    pub fallback_rate: Option<f64>,
    pub spend_usd: f64,
    pub snapshot_changes: u64,
    pub drift: Vec<FeatureDrift>,
    pub fairness: Option<Fairness>,
    /// Recent decision ids, the notable ones (blocked, abusive, failed) preferred.
    pub examples: Vec<String>,
}

fn rate(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

pub fn signals(w: &Bucket, baseline: Option<&Baseline>, cfg: &Config) -> Signals {
    let latency = w.latency_ms.count();
    let drift = baseline
        .map(|b| {
            b.features
                .iter()
                .map(|(name, base)| {
                    let empty = Feature::default();
                    let current = w.features.get(name).unwrap_or(&empty);
                    let enough = current.count() >= cfg.drift_min_samples
                        && base.count() >= cfg.drift_min_samples;
                    let (expected, actual) = binned(base, current, cfg.drift_bins);
                    FeatureDrift {
                        feature: name.clone(),
                        window_n: current.count(),
                        baseline_n: base.count(),
                        psi: psi(&expected, &actual).filter(|_| enough),
                        js_distance: js_distance(&expected, &actual).filter(|_| enough),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Signals {
        decisions: w.decisions,
        executions: w.executions,
        latency_ms: (latency > 0).then(|| Latency {
            p50: w.latency_ms.quantile(0.5).unwrap_or_default(),
            p95: w.latency_ms.quantile(0.95).unwrap_or_default(),
            p99: w.latency_ms.quantile(0.99).unwrap_or_default(),
            count: latency,
        }),
        error_rate: rate(w.errors, w.executions),
        accuracy: (w.scores > 0).then(|| w.score_sum / w.scores as f64),
        accuracy_samples: w.scores,
        abuse_rate: rate(w.abusive, w.decisions),
        fallback_rate: rate(w.fallbacks, w.executions),
        spend_usd: w.spend_usd_micros as f64 / 1e6,
        snapshot_changes: w.snapshot_changes,
        drift,
        fairness: (!w.groups.is_empty()).then(|| fairness(&w.groups, cfg.min_group_size)),
        examples: w.examples.clone(),
    }
}

/// Whether a threshold is a floor or a ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// The value must stay at or above the threshold.
    Min,
    /// The value must stay at or below the threshold.
    Max,
}

/// Every threshold an approval may set: name, bound, what is compared.
pub const THRESHOLDS: [(&str, Bound, &str); 9] = [
    (
        "accuracy",
        Bound::Min,
        "mean feedback score / share of labelled predictions that were right",
    ),
    (
        "drift",
        Bound::Max,
        "largest PSI over the baseline's features",
    ),
    (
        "drift_js",
        Bound::Max,
        "largest Jensen-Shannon distance over the baseline's features",
    ),
    ("latency", Bound::Max, "p99 latency in milliseconds"),
    ("error", Bound::Max, "share of executions that failed"),
    (
        "abuse",
        Bound::Max,
        "share of decisions with injection, secret or PII findings or abuse blocks",
    ),
    (
        "fallback",
        Bound::Max,
        "share of executions served by a fallback",
    ),
    (
        "fairness",
        Bound::Min,
        "demographic-parity ratio: lowest / highest selection rate (four-fifths rule: 0.8)",
    ),
    ("spend", Bound::Max, "USD spent in the window"),
];

/// The bound of a threshold name, or None when there is no such threshold.
pub fn bound_of(threshold: &str) -> Option<Bound> {
    THRESHOLDS
        .iter()
        .find(|(name, _, _)| *name == threshold)
        .map(|(_, bound, _)| *bound)
}

/// The signal a threshold watches, as in reason codes `contract.breach.<signal>`.
pub fn signal_of(threshold: &str) -> &str {
    match threshold {
        "drift_js" => "drift",
        other => other,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckState {
    Within,
    Breached,
    /// Too few observations in the window to judge.
    Insufficient,
}

/// One threshold against its signal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub threshold: String,
    pub bound: Bound,
    pub limit: f64,
    pub value: Option<f64>,
    /// The observations the value rests on.
    pub samples: u64,
    pub state: CheckState,
}

/// Checks each threshold; unknown names are left out (approvals refuse them when granted).
pub fn checks(s: &Signals, thresholds: &BTreeMap<String, f64>, cfg: &Config) -> Vec<Check> {
    thresholds
        .iter()
        .filter_map(|(name, limit)| {
            let bound = bound_of(name)?;
            let (value, samples, needed) = measure(s, name, cfg);
            let state = match value {
                Some(_) if samples < needed => CheckState::Insufficient,
                None => CheckState::Insufficient,
                Some(v) if bound == Bound::Max && v > *limit => CheckState::Breached,
                Some(v) if bound == Bound::Min && v < *limit => CheckState::Breached,
                Some(_) => CheckState::Within,
            };
            Some(Check {
                threshold: name.clone(),
                bound,
                limit: *limit,
                value,
                samples,
                state,
            })
        })
        .collect()
}

/// (value, observations behind it, observations needed).
fn measure(s: &Signals, threshold: &str, cfg: &Config) -> (Option<f64>, u64, u64) {
    let drift = |pick: fn(&FeatureDrift) -> Option<f64>| {
        let worst = s
            .drift
            .iter()
            .filter_map(|d| pick(d).map(|v| (v, d.window_n)))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        match worst {
            Some((v, n)) => (Some(v), n, cfg.drift_min_samples),
            None => (
                None,
                s.drift.iter().map(|d| d.window_n).max().unwrap_or(0),
                cfg.drift_min_samples,
            ),
        }
    };
    match threshold {
        "accuracy" => (s.accuracy, s.accuracy_samples, cfg.min_samples),
        "drift" => drift(|d| d.psi),
        "drift_js" => drift(|d| d.js_distance),
        "latency" => match s.latency_ms {
            Some(l) => (Some(l.p99), l.count, cfg.min_samples),
            None => (None, 0, cfg.min_samples),
        },
        "error" => (s.error_rate, s.executions, cfg.min_samples),
        "abuse" => (s.abuse_rate, s.decisions, cfg.min_samples),
        "fallback" => (s.fallback_rate, s.executions, cfg.min_samples),
        "fairness" => {
            let f = s.fairness.as_ref();
            let compared = f.map_or(0, |f| {
                f.groups.iter().filter(|g| g.compared).map(|g| g.n).sum()
            });
            (f.and_then(|f| f.demographic_parity_ratio), compared, 0)
        }
        "spend" => (Some(s.spend_usd), s.executions, 0),
        _ => (None, 0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::Outcome;
    use crate::sketch::FeatureValue;

    fn limits(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(n, v)| (n.to_string(), *v)).collect()
    }

    #[test]
    fn rates_breach_only_with_enough_samples() {
        let cfg = Config::default();
        let mut w = Bucket::default();
        for i in 0..10 {
            w.record_decision(&format!("d{i}"), false, i < 5);
        }
        let t = limits(&[("abuse", 0.1)]);
        let c = checks(&signals(&w, None, &cfg), &t, &cfg);
        assert_eq!(
            (c[0].value, c[0].state),
            (Some(0.5), CheckState::Insufficient)
        );
        for i in 10..20 {
            w.record_decision(&format!("d{i}"), false, false);
        }
        let c = checks(&signals(&w, None, &cfg), &t, &cfg);
        assert_eq!((c[0].value, c[0].state), (Some(0.25), CheckState::Breached));
    }

    #[test]
    fn minimums_breach_below_and_maximums_above() {
        let cfg = Config {
            min_samples: 1,
            ..Config::default()
        };
        let mut w = Bucket::default();
        for ms in [10.0, 20.0, 400.0] {
            w.record_outcome(&Outcome {
                executed: true,
                latency_ms: Some(ms),
                score: Some(0.7),
                ..Default::default()
            });
        }
        let s = signals(&w, None, &cfg);
        let c = checks(
            &s,
            &limits(&[("accuracy", 0.8), ("latency", 500.0), ("spend", 0.0)]),
            &cfg,
        );
        let state = |name: &str| c.iter().find(|c| c.threshold == name).map(|c| c.state);
        assert_eq!(state("accuracy"), Some(CheckState::Breached));
        assert_eq!(
            state("latency"),
            Some(CheckState::Within),
            "p99 ~400 ms <= 500"
        );
        assert_eq!(state("spend"), Some(CheckState::Within), "nothing spent");
        assert_eq!(bound_of("nonsense"), None);
    }

    #[test]
    fn drift_needs_a_baseline_and_enough_values_on_both_sides() {
        let cfg = Config::default();
        let mut baseline = Baseline::default();
        let mut w = Bucket::default();
        for i in 0..200 {
            baseline
                .features
                .entry("score".into())
                .or_default()
                .add(&FeatureValue::Number((i % 100) as f64));
        }
        let t = limits(&[("drift", 0.2), ("drift_js", 0.1)]);
        let none = checks(&signals(&w, None, &cfg), &t, &cfg);
        assert!(
            none.iter().all(|c| c.state == CheckState::Insufficient),
            "no baseline, no drift"
        );
        for i in 0..60 {
            w.record_outcome(&Outcome {
                features: vec![("score".into(), FeatureValue::Number(50.0 + (i % 50) as f64))],
                ..Default::default()
            });
        }
        let s = signals(&w, Some(&baseline), &cfg);
        let c = checks(&s, &t, &cfg);
        assert!(c.iter().all(|c| c.state == CheckState::Breached), "{c:?}");
        let psi = s.drift[0].psi.unwrap_or_default();
        assert!(psi > 1.0, "half the bins emptied is major drift: {psi}");
    }
}
