//! Monitoring without I/O: what a deployment did per bucket of time ([`Bucket`]), windows of
//! buckets ([`Series`]), the signals over a window ([`signals`]), drift and fairness
//! ([`stats`]), checks against an approval's thresholds ([`checks`]) and what to do about a
//! breach ([`breach::next_step`]). The gateway feeds it and applies what it decides; storage
//! keeps the buckets (docs/monitoring.md).

pub mod breach;
mod bucket;
mod signals;
pub mod sketch;
pub mod stats;

pub use bucket::{Bucket, Outcome, Series, EXAMPLES};
pub use signals::{
    bound_of, checks, signal_of, signals, Baseline, Bound, Check, CheckState, Config, FeatureDrift,
    Latency, Signals, THRESHOLDS,
};
pub use sketch::{Feature, FeatureValue};
