//! What one deployment did in one time bucket, and a series of buckets. Buckets add up, so a
//! window is the sum of its buckets, and buckets written by different processes merge.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::sketch::{Feature, FeatureValue, Sketch};
use crate::stats::GroupCounts;

/// Decision ids kept per bucket for alerts ("the decisions to look at").
pub const EXAMPLES: usize = 5;
/// Distinct features and groups a bucket keeps: clients name them, so they are bounded. Values
/// of further features are not kept; further groups are counted under [`crate::sketch::OTHER`].
pub const MAX_FEATURES: usize = 64;
pub const MAX_GROUPS: usize = 64;

/// What is known after a request ran (from the gateway, `/v1/outcome` or `/v1/feedback`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub decision_id: Option<String>,
    /// Whether this reports an execution (latency, success, fallback); feedback does not.
    pub executed: bool,
    pub latency_ms: Option<f64>,
    pub error: bool,
    pub fallback: bool,
    pub spend_usd_micros: u64,
    pub snapshot_changed: bool,
    /// An accuracy proxy in [0, 1].
    pub score: Option<f64>,
    pub features: Vec<(String, FeatureValue)>,
    pub group: Option<String>,
    pub prediction: Option<bool>,
    pub label: Option<bool>,
}

/// Counts of one deployment over one bucket of time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub decisions: u64,
    pub blocked: u64,
    /// Decisions with injection, secret or PII findings, or blocked for abuse.
    pub abusive: u64,
    pub executions: u64,
    pub errors: u64,
    pub fallbacks: u64,
    pub latency_ms: Sketch,
    pub spend_usd_micros: u64,
    pub snapshot_changes: u64,
    pub score_sum: f64,
    pub scores: u64,
    pub features: BTreeMap<String, Feature>,
    pub groups: BTreeMap<String, GroupCounts>,
    pub examples: Vec<String>,
}

impl Bucket {
    pub fn record_decision(&mut self, decision_id: &str, blocked: bool, abusive: bool) {
        self.decisions += 1;
        self.blocked += u64::from(blocked);
        self.abusive += u64::from(abusive);
        if abusive || blocked || self.examples.len() < EXAMPLES {
            self.example(decision_id);
        }
    }

    pub fn record_outcome(&mut self, o: &Outcome) {
        if o.executed {
            self.executions += 1;
            self.errors += u64::from(o.error);
            self.fallbacks += u64::from(o.fallback);
            if let Some(ms) = o.latency_ms {
                self.latency_ms.add(ms);
            }
        }
        self.spend_usd_micros = self.spend_usd_micros.saturating_add(o.spend_usd_micros);
        self.snapshot_changes += u64::from(o.snapshot_changed);
        let labelled_match = match (o.prediction, o.label) {
            (Some(p), Some(l)) => Some(if p == l { 1.0 } else { 0.0 }),
            _ => None,
        };
        for score in o.score.into_iter().chain(labelled_match) {
            self.score_sum += score;
            self.scores += 1;
        }
        for (name, value) in &o.features {
            let full = self.features.len() >= MAX_FEATURES;
            match self.features.get_mut(name) {
                Some(feature) => feature.add(value),
                None if full => {}
                None => {
                    let mut feature = Feature::default();
                    feature.add(value);
                    self.features.insert(name.clone(), feature);
                }
            }
        }
        if let (Some(group), Some(prediction)) = (&o.group, o.prediction) {
            let known = self.groups.contains_key(group) || self.groups.len() < MAX_GROUPS - 1;
            let group = if known {
                group.as_str()
            } else {
                crate::sketch::OTHER
            };
            match self.groups.get_mut(group) {
                Some(counts) => counts.add(prediction, o.label),
                None => {
                    let mut counts = GroupCounts::default();
                    counts.add(prediction, o.label);
                    self.groups.insert(group.to_string(), counts);
                }
            }
        }
        if o.error || o.fallback {
            if let Some(id) = &o.decision_id {
                self.example(id);
            }
        }
    }

    fn example(&mut self, decision_id: &str) {
        if self.examples.iter().any(|e| e == decision_id) {
            return;
        }
        if self.examples.len() == EXAMPLES {
            self.examples.remove(0);
        }
        self.examples.push(decision_id.to_string());
    }

    pub fn merge(&mut self, o: &Bucket) {
        self.decisions += o.decisions;
        self.blocked += o.blocked;
        self.abusive += o.abusive;
        self.executions += o.executions;
        self.errors += o.errors;
        self.fallbacks += o.fallbacks;
        self.latency_ms.merge(&o.latency_ms);
        self.spend_usd_micros = self.spend_usd_micros.saturating_add(o.spend_usd_micros);
        self.snapshot_changes += o.snapshot_changes;
        self.score_sum += o.score_sum;
        self.scores += o.scores;
        for (name, f) in &o.features {
            self.features.entry(name.clone()).or_default().merge(f);
        }
        for (group, g) in &o.groups {
            self.groups.entry(group.clone()).or_default().merge(g);
        }
        for id in &o.examples {
            self.example(id);
        }
    }

    /// The bucket as stored: postcard (compact, and several times quicker to read back than
    /// JSON; a status over a thousand deployments reads tens of thousands of buckets).
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        postcard::to_allocvec(self).map_err(|e| format!("cannot encode a bucket: {e}"))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Bucket, String> {
        postcard::from_bytes(bytes).map_err(|e| format!("a stored bucket does not decode: {e}"))
    }
}

/// Consecutive buckets of one deployment, oldest first, each `bucket_ms` long and aligned on
/// multiples of it; buckets older than `keep_ms` are dropped as new ones open.
#[derive(Debug, Clone)]
pub struct Series {
    bucket_ms: i64,
    keep_ms: i64,
    buckets: VecDeque<Slot>,
}

#[derive(Debug, Clone)]
struct Slot {
    start_ms: i64,
    bucket: Bucket,
    /// Changed since it was last handed to [`Series::take_dirty`].
    dirty: bool,
}

impl Series {
    pub fn new(bucket_ms: i64, keep_ms: i64) -> Series {
        Series {
            bucket_ms: bucket_ms.max(1),
            keep_ms,
            buckets: VecDeque::new(),
        }
    }

    /// Changes how long buckets are kept (a reloaded contract with another window).
    pub fn keep(&mut self, keep_ms: i64) {
        self.keep_ms = keep_ms;
    }

    /// The start of the bucket holding `at_ms`.
    pub fn bucket_start(&self, at_ms: i64) -> i64 {
        at_ms.div_euclid(self.bucket_ms) * self.bucket_ms
    }

    /// The bucket for `now_ms`, opened if needed (a clock that steps back writes to the newest).
    pub fn at(&mut self, now_ms: i64) -> &mut Bucket {
        let start = self.bucket_start(now_ms);
        let newest = self.buckets.back().map(|s| s.start_ms);
        if newest.is_none_or(|n| n < start) {
            self.buckets.push_back(Slot {
                start_ms: start,
                bucket: Bucket::default(),
                dirty: false,
            });
            while self
                .buckets
                .front()
                .is_some_and(|s| s.start_ms + self.bucket_ms <= now_ms - self.keep_ms)
            {
                self.buckets.pop_front();
            }
        }
        // Not empty: a slot was pushed above if there was none.
        let newest = self.buckets.len() - 1;
        let slot = &mut self.buckets[newest];
        slot.dirty = true;
        &mut slot.bucket
    }

    /// Adds a bucket read back from storage (before live traffic, or another writer's).
    pub fn load(&mut self, start_ms: i64, bucket: &Bucket) {
        let start = self.bucket_start(start_ms);
        let at = self.buckets.partition_point(|s| s.start_ms < start);
        match self.buckets.get_mut(at) {
            Some(slot) if slot.start_ms == start => slot.bucket.merge(bucket),
            _ => self.buckets.insert(
                at,
                Slot {
                    start_ms: start,
                    bucket: bucket.clone(),
                    dirty: false,
                },
            ),
        }
    }

    /// The sum of the buckets that overlap [from_ms, to_ms).
    pub fn window(&self, from_ms: i64, to_ms: i64) -> Bucket {
        let mut sum = Bucket::default();
        for slot in &self.buckets {
            if slot.start_ms + self.bucket_ms > from_ms && slot.start_ms < to_ms {
                sum.merge(&slot.bucket);
            }
        }
        sum
    }

    /// Buckets changed since the last call, with their starts, for writing to storage.
    pub fn take_dirty(&mut self) -> Vec<(i64, Bucket)> {
        let mut out = Vec::new();
        for slot in self.buckets.iter_mut().filter(|s| s.dirty) {
            slot.dirty = false;
            out.push((slot.start_ms, slot.bucket.clone()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_sums_the_buckets_it_overlaps_and_old_ones_are_dropped() {
        let mut s = Series::new(10_000, 60_000);
        s.at(1_000).record_decision("d1", false, false);
        s.at(15_000).record_decision("d2", true, true);
        s.at(25_000).record_decision("d3", false, false);
        assert_eq!(s.window(10_000, 30_000).decisions, 2);
        assert_eq!(s.window(0, 100_000).decisions, 3);
        assert_eq!(s.window(0, 100_000).abusive, 1);
        s.at(100_000).record_decision("d4", false, false);
        assert_eq!(
            s.window(0, 200_000).decisions,
            1,
            "buckets past the keep span are gone"
        );
    }

    #[test]
    fn dirty_buckets_are_handed_out_once() {
        let mut s = Series::new(10_000, 60_000);
        s.at(1_000).record_decision("d1", false, false);
        assert_eq!(s.take_dirty().len(), 1);
        assert!(s.take_dirty().is_empty());
        s.at(2_000).record_decision("d2", false, false);
        let dirty = s.take_dirty();
        assert_eq!((dirty[0].0, dirty[0].1.decisions), (0, 2));
    }

    #[test]
    fn loaded_buckets_merge_with_live_ones() {
        let mut s = Series::new(10_000, 60_000);
        s.at(21_000).record_decision("live", false, false);
        let mut stored = Bucket::default();
        stored.record_decision("old", false, true);
        s.load(20_500, &stored);
        s.load(5_000, &stored);
        assert_eq!(s.window(0, 30_000).decisions, 3);
        assert_eq!(s.window(20_000, 30_000).abusive, 1);
    }

    #[test]
    fn client_named_features_and_groups_are_bounded() {
        let mut b = Bucket::default();
        for i in 0..200 {
            b.record_outcome(&Outcome {
                features: vec![(format!("f{i}"), FeatureValue::Number(1.0))],
                group: Some(format!("g{i}")),
                prediction: Some(true),
                spend_usd_micros: u64::MAX / 2,
                ..Default::default()
            });
        }
        assert_eq!(b.features.len(), MAX_FEATURES);
        assert_eq!(b.groups.len(), MAX_GROUPS);
        assert_eq!(
            b.groups[crate::sketch::OTHER].n,
            200 - (MAX_GROUPS as u64 - 1)
        );
        assert_eq!(b.spend_usd_micros, u64::MAX, "spend saturates");
    }

    #[test]
    fn outcomes_feed_rates_scores_features_and_groups() {
        let mut b = Bucket::default();
        b.record_outcome(&Outcome {
            decision_id: Some("d1".into()),
            executed: true,
            latency_ms: Some(12.0),
            error: true,
            prediction: Some(true),
            label: Some(false),
            group: Some("g".into()),
            features: vec![("x".into(), FeatureValue::Number(1.0))],
            ..Default::default()
        });
        b.record_outcome(&Outcome {
            score: Some(0.5),
            ..Default::default()
        });
        assert_eq!((b.executions, b.errors, b.scores), (1, 1, 2));
        assert!(
            (b.score_sum - 0.5).abs() < 1e-12,
            "a wrong prediction scores 0"
        );
        assert_eq!(b.groups["g"].false_positive, 1);
        assert_eq!(b.examples, vec!["d1".to_string()]);
        let back = Bucket::from_bytes(&b.to_bytes().unwrap_or_default()).unwrap_or_default();
        assert_eq!(back, b, "buckets survive storage");
        assert!(
            Bucket::from_bytes(b"\xff\xff").is_err(),
            "garbage is an error, not a bucket"
        );
    }
}
