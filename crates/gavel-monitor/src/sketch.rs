//! Mergeable distributions: a log-scale histogram for numbers and a capped count table for
//! categories. Both merge by adding counts, so windows are sums of buckets and replicas' or
//! processes' observations add up without coordination.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Ratio between consecutive bucket bounds: any value is represented within 1% of itself.
const GAMMA: f64 = 1.02;
/// Values closer to zero than this are counted as zero.
const ZERO: f64 = 1e-9;
/// Distinct categories kept per feature; further ones are counted under [`OTHER`].
pub const MAX_CATEGORIES: usize = 64;
/// The category that collects everything past [`MAX_CATEGORIES`].
pub const OTHER: &str = "(other)";

/// A histogram with logarithmic buckets (1% relative precision) over any finite numbers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sketch {
    #[serde(default)]
    positive: Counts,
    #[serde(default)]
    negative: Counts,
    #[serde(default)]
    zero: u64,
}

/// Counts by bucket index, sorted by index: merging two is one linear pass, and they are
/// stored as a flat `[index, count, index, count, ...]` array (compact, quick to parse).
#[derive(Debug, Clone, Default, PartialEq)]
struct Counts(Vec<(i32, u64)>);

impl Counts {
    fn add(&mut self, index: i32, n: u64) {
        match self.0.binary_search_by_key(&index, |(i, _)| *i) {
            Ok(at) => self.0[at].1 += n,
            Err(at) => self.0.insert(at, (index, n)),
        }
    }

    fn merge(&mut self, other: &Counts) {
        if other.0.is_empty() {
            return;
        }
        if self.0.is_empty() {
            self.0.clone_from(&other.0);
            return;
        }
        // Windows merge buckets of the same feature: usually every index is already here.
        if self.add_in_place(other) {
            return;
        }
        let mut merged = Vec::with_capacity(self.0.len().max(other.0.len()));
        let (mut a, mut b) = (self.0.iter().peekable(), other.0.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.0 == y.0 => {
                    merged.push((x.0, x.1 + y.1));
                    a.next();
                    b.next();
                }
                (Some(x), Some(y)) if x.0 < y.0 => {
                    merged.push(**x);
                    a.next();
                }
                (_, Some(y)) => {
                    merged.push(**y);
                    b.next();
                }
                (Some(x), None) => {
                    merged.push(**x);
                    a.next();
                }
                (None, None) => break,
            }
        }
        self.0 = merged;
    }

    /// Adds `other` when it holds no index that `self` lacks; false (nothing changed) if not.
    fn add_in_place(&mut self, other: &Counts) -> bool {
        let mut at = 0;
        for (index, _) in &other.0 {
            while at < self.0.len() && self.0[at].0 < *index {
                at += 1;
            }
            if at == self.0.len() || self.0[at].0 != *index {
                return false;
            }
        }
        let mut at = 0;
        for (index, n) in &other.0 {
            while self.0[at].0 < *index {
                at += 1;
            }
            self.0[at].1 += n;
        }
        true
    }

    fn total(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }
}

impl Serialize for Counts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.0.len() * 2))?;
        for (index, n) in &self.0 {
            seq.serialize_element(&i64::from(*index))?;
            seq.serialize_element(&(*n as i64))?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Counts {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let flat = Vec::<i64>::deserialize(deserializer)?;
        if flat.len() % 2 != 0 {
            return Err(serde::de::Error::custom(
                "counts must be index, count pairs",
            ));
        }
        let mut counts = Counts::default();
        for pair in flat.chunks_exact(2) {
            let index = i32::try_from(pair[0]).map_err(serde::de::Error::custom)?;
            let n = u64::try_from(pair[1]).map_err(serde::de::Error::custom)?;
            // Stored sorted; `add` keeps a hand-edited row correct too.
            match counts.0.last() {
                Some((last, _)) if *last >= index => counts.add(index, n),
                _ => counts.0.push((index, n)),
            }
        }
        Ok(counts)
    }
}

/// Bucket indexes are kept within +-MAX_INDEX (magnitudes from about 1e-9 to 1e17; larger
/// ones are counted in the last bucket), so that every representative value is finite.
const MAX_INDEX: i32 = 2000;

fn index_of(magnitude: f64) -> i32 {
    // Bucket i holds (GAMMA^(i-1), GAMMA^i].
    ((magnitude.ln() / GAMMA.ln()).ceil() as i32).clamp(-MAX_INDEX, MAX_INDEX)
}

/// A value inside bucket `index`, within 1% of every value the bucket holds.
fn representative(index: i32) -> f64 {
    2.0 * GAMMA.powi(index) / (1.0 + GAMMA)
}

impl Sketch {
    /// Counts `value`; NaN and infinities are ignored (callers refuse them at the edge).
    pub fn add(&mut self, value: f64) {
        if !value.is_finite() {
            return;
        }
        let magnitude = value.abs();
        if magnitude < ZERO {
            self.zero += 1;
        } else if value > 0.0 {
            self.positive.add(index_of(magnitude), 1);
        } else {
            self.negative.add(index_of(magnitude), 1);
        }
    }

    pub fn merge(&mut self, other: &Sketch) {
        self.positive.merge(&other.positive);
        self.negative.merge(&other.negative);
        self.zero += other.zero;
    }

    pub fn count(&self) -> u64 {
        self.positive.total() + self.negative.total() + self.zero
    }

    /// Every bucket as (representative value, count), in ascending order of value.
    pub fn values(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let negative = self
            .negative
            .0
            .iter()
            .rev()
            .map(|(i, n)| (-representative(*i), *n));
        let zero = (self.zero > 0).then_some((0.0, self.zero));
        let positive = self
            .positive
            .0
            .iter()
            .map(|(i, n)| (representative(*i), *n));
        negative.chain(zero).chain(positive)
    }

    /// The value at quantile `q` in [0, 1] (nearest rank), or None when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (value, n) in self.values() {
            seen += n;
            if seen >= rank {
                return Some(value);
            }
        }
        self.values().last().map(|(v, _)| v)
    }

    /// Approximate mean (from the bucket representatives).
    pub fn mean(&self) -> Option<f64> {
        let total = self.count();
        (total > 0).then(|| self.values().map(|(v, n)| v * n as f64).sum::<f64>() / total as f64)
    }
}

/// Counts per category, at most [`MAX_CATEGORIES`] of them plus [`OTHER`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Categories {
    counts: BTreeMap<String, u64>,
}

impl Categories {
    pub fn add(&mut self, category: &str) {
        self.add_n(category, 1);
    }

    fn add_n(&mut self, category: &str, n: u64) {
        if let Some(count) = self.counts.get_mut(category) {
            *count += n;
        } else if self.counts.len() < MAX_CATEGORIES {
            self.counts.insert(category.to_string(), n);
        } else {
            *self.counts.entry(OTHER.to_string()).or_default() += n;
        }
    }

    pub fn merge(&mut self, other: &Categories) {
        for (category, n) in &other.counts {
            self.add_n(category, *n);
        }
    }

    pub fn count(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.counts.iter().map(|(c, n)| (c.as_str(), *n))
    }

    pub fn get(&self, category: &str) -> u64 {
        self.counts.get(category).copied().unwrap_or(0)
    }
}

/// One value of a declared or built-in feature.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureValue {
    Number(f64),
    Category(String),
}

/// The distribution of one feature: its numbers and, apart, its categorical values (a feature
/// that changes type shows up as drift rather than being dropped).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    #[serde(default)]
    pub numbers: Sketch,
    #[serde(default)]
    pub categories: Categories,
}

impl Feature {
    pub fn add(&mut self, value: &FeatureValue) {
        match value {
            FeatureValue::Number(v) => self.numbers.add(*v),
            FeatureValue::Category(c) => self.categories.add(c),
        }
    }

    pub fn merge(&mut self, other: &Feature) {
        self.numbers.merge(&other.numbers);
        self.categories.merge(&other.categories);
    }

    pub fn count(&self) -> u64 {
        self.numbers.count() + self.categories.count()
    }

    /// Numeric when most of its values are numbers.
    pub fn is_numeric(&self) -> bool {
        self.numbers.count() >= self.categories.count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quantiles_are_within_one_percent() {
        let mut s = Sketch::default();
        for v in 1..=1000 {
            s.add(v as f64);
        }
        for (q, exact) in [(0.5, 500.0), (0.95, 950.0), (0.99, 990.0), (1.0, 1000.0)] {
            let got = s.quantile(q).unwrap_or_default();
            assert!(
                (got - exact).abs() / exact <= 0.01,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(s.count(), 1000);
    }

    #[test]
    fn negatives_zero_and_positives_stay_in_order() {
        let mut s = Sketch::default();
        for v in [-5.0, 0.0, 3.0, -0.5, f64::NAN, f64::INFINITY] {
            s.add(v);
        }
        let values: Vec<f64> = s.values().map(|(v, _)| v).collect();
        assert_eq!(values.len(), 4, "NaN and infinity are not counted");
        assert!(values.windows(2).all(|w| w[0] < w[1]), "{values:?}");
        assert_eq!(s.quantile(0.0), Some(values[0]));
    }

    #[test]
    fn huge_values_stay_finite() {
        let mut s = Sketch::default();
        s.add(1e308);
        s.add(-1e308);
        assert!(s.values().all(|(v, _)| v.is_finite()));
        assert!(s.quantile(1.0).is_some_and(f64::is_finite));
    }

    #[test]
    fn categories_past_the_cap_go_to_other() {
        let mut c = Categories::default();
        for i in 0..MAX_CATEGORIES + 10 {
            c.add(&format!("c{i}"));
        }
        assert_eq!(c.get(OTHER), 10);
        assert_eq!(c.count(), (MAX_CATEGORIES + 10) as u64);
    }

    proptest! {
        #[test]
        fn merging_equals_adding_everything_to_one(a in proptest::collection::vec(-1e6f64..1e6, 0..200), b in proptest::collection::vec(-1e6f64..1e6, 0..200)) {
            let (mut left, mut right, mut all) = (Sketch::default(), Sketch::default(), Sketch::default());
            for v in &a { left.add(*v); all.add(*v); }
            for v in &b { right.add(*v); all.add(*v); }
            left.merge(&right);
            prop_assert_eq!(left, all);
        }

        #[test]
        fn merging_in_either_order_and_through_storage_agrees(a in proptest::collection::vec(1f64..1e4, 0..100), b in proptest::collection::vec(1f64..1e4, 0..100)) {
            let (mut x, mut y) = (Sketch::default(), Sketch::default());
            for v in &a { x.add(*v); }
            for v in &b { y.add(*v); }
            let mut xy = x.clone();
            xy.merge(&y);
            let mut yx = y.clone();
            yx.merge(&x);
            prop_assert_eq!(&xy, &yx);
            let stored: Sketch = serde_json::from_str(&serde_json::to_string(&xy).unwrap_or_default()).unwrap_or_default();
            prop_assert_eq!(stored, xy);
        }

        #[test]
        fn every_value_is_represented_within_one_percent(v in 1e-6f64..1e9) {
            let mut s = Sketch::default();
            s.add(v);
            let got = s.quantile(0.5).unwrap_or_default();
            prop_assert!((got - v).abs() / v <= 0.01);
        }
    }
}
