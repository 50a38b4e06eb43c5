//! Distribution distances (PSI, Jensen-Shannon) and fairness rates. Conventions are documented
//! in docs/monitoring.md; the unit tests check them against values worked out by hand.

use serde::Serialize;

use crate::sketch::{Feature, OTHER};

/// The proportion an empty bin counts as in PSI (0.01%), so that an empty bin on either side
/// gives a large but finite term instead of infinity.
pub const PSI_EMPTY_BIN: f64 = 1e-4;

/// Population Stability Index of `actual` against `expected`, both counts over the same bins:
/// sum of (a - e) * ln(a / e) over the bins' proportions. None when either side is empty.
pub fn psi(expected: &[u64], actual: &[u64]) -> Option<f64> {
    let (e_total, a_total) = (total(expected)?, total(actual)?);
    let mut sum = 0.0;
    for (e, a) in expected.iter().zip(actual) {
        let e = (*e as f64 / e_total).max(PSI_EMPTY_BIN);
        let a = (*a as f64 / a_total).max(PSI_EMPTY_BIN);
        sum += (a - e) * (a / e).ln();
    }
    Some(sum)
}

/// Jensen-Shannon distance (square root of the divergence, logarithms base 2, so within
/// [0, 1]) between two count vectors over the same bins. None when either side is empty.
pub fn js_distance(p: &[u64], q: &[u64]) -> Option<f64> {
    let (p_total, q_total) = (total(p)?, total(q)?);
    let mut divergence = 0.0;
    for (p, q) in p.iter().zip(q) {
        let (p, q) = (*p as f64 / p_total, *q as f64 / q_total);
        let m = (p + q) / 2.0;
        if p > 0.0 {
            divergence += 0.5 * p * (p / m).log2();
        }
        if q > 0.0 {
            divergence += 0.5 * q * (q / m).log2();
        }
    }
    Some(divergence.max(0.0).sqrt())
}

fn total(counts: &[u64]) -> Option<f64> {
    let sum: u64 = counts.iter().sum();
    (sum > 0).then_some(sum as f64)
}

/// The baseline and current counts of one feature over common bins: for a numeric feature, the
/// baseline's `bins`-quantiles as upper edges (equal edges merged, so a discrete feature gets
/// fewer bins) plus one bin for non-numeric values; for a categorical one, every category seen
/// on either side plus one bin for numbers.
pub fn binned(baseline: &Feature, current: &Feature, bins: usize) -> (Vec<u64>, Vec<u64>) {
    if baseline.is_numeric() {
        let mut edges: Vec<f64> = (1..bins.max(1))
            .filter_map(|k| baseline.numbers.quantile(k as f64 / bins as f64))
            .collect();
        edges.dedup();
        let count = |f: &Feature| {
            let mut counts = vec![0u64; edges.len() + 2];
            for (value, n) in f.numbers.values() {
                counts[edges.partition_point(|edge| *edge < value)] += n;
            }
            counts[edges.len() + 1] = f.categories.count();
            counts
        };
        (count(baseline), count(current))
    } else {
        // Categories named on both sides are compared one by one; the rest (new ones, gone
        // ones, and those a side counted under OTHER once it had MAX_CATEGORIES names, which
        // depends on arrival order) are compared together as OTHER.
        let names: Vec<&str> = baseline
            .categories
            .iter()
            .map(|(c, _)| c)
            .filter(|c| *c != OTHER && current.categories.get(c) > 0)
            .collect();
        let count = |f: &Feature| {
            let mut counts: Vec<u64> = names.iter().map(|c| f.categories.get(c)).collect();
            counts.push(f.categories.count() - counts.iter().sum::<u64>());
            counts.push(f.numbers.count());
            counts
        };
        (count(baseline), count(current))
    }
}

/// What one group's outcomes add up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct GroupCounts {
    /// Outcomes with a prediction.
    pub n: u64,
    /// Predicted positive (selected, flagged).
    pub selected: u64,
    pub true_positive: u64,
    pub false_positive: u64,
    pub true_negative: u64,
    pub false_negative: u64,
}

impl GroupCounts {
    pub fn add(&mut self, prediction: bool, label: Option<bool>) {
        self.n += 1;
        self.selected += u64::from(prediction);
        match (prediction, label) {
            (true, Some(true)) => self.true_positive += 1,
            (true, Some(false)) => self.false_positive += 1,
            (false, Some(false)) => self.true_negative += 1,
            (false, Some(true)) => self.false_negative += 1,
            (_, None) => {}
        }
    }

    pub fn merge(&mut self, o: &GroupCounts) {
        self.n += o.n;
        self.selected += o.selected;
        self.true_positive += o.true_positive;
        self.false_positive += o.false_positive;
        self.true_negative += o.true_negative;
        self.false_negative += o.false_negative;
    }

    pub fn selection_rate(&self) -> Option<f64> {
        ratio(self.selected, self.n)
    }

    /// Share of actual negatives predicted positive.
    pub fn false_positive_rate(&self) -> Option<f64> {
        ratio(
            self.false_positive,
            self.false_positive + self.true_negative,
        )
    }

    /// Share of actual positives predicted negative.
    pub fn false_negative_rate(&self) -> Option<f64> {
        ratio(
            self.false_negative,
            self.false_negative + self.true_positive,
        )
    }

    pub fn true_positive_rate(&self) -> Option<f64> {
        ratio(self.true_positive, self.false_negative + self.true_positive)
    }
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// Rates of one group, as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupRates {
    pub group: String,
    pub n: u64,
    pub selection_rate: Option<f64>,
    pub false_positive_rate: Option<f64>,
    pub false_negative_rate: Option<f64>,
    /// Whether the group has at least the minimum size and so enters the comparisons.
    pub compared: bool,
}

/// Fairness across groups. Convention: every group with at least the minimum number of
/// outcomes is compared with every other (so the figures are max - min and min / max over
/// those groups, which is also each group against the most-selected one for the ratio).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fairness {
    pub groups: Vec<GroupRates>,
    /// max - min selection rate.
    pub demographic_parity_difference: Option<f64>,
    /// min / max selection rate: the four-fifths rule asks for >= 0.8.
    pub demographic_parity_ratio: Option<f64>,
    /// max - min true-positive rate (among groups with labelled positives).
    pub equal_opportunity_difference: Option<f64>,
}

pub fn fairness<'a>(
    groups: impl IntoIterator<Item = (&'a String, &'a GroupCounts)>,
    min_group_size: u64,
) -> Fairness {
    let mut rows = Vec::new();
    let (mut selection, mut tpr) = (Vec::new(), Vec::new());
    for (group, counts) in groups {
        let compared = counts.n >= min_group_size;
        if compared {
            selection.extend(counts.selection_rate());
            tpr.extend(counts.true_positive_rate());
        }
        rows.push(GroupRates {
            group: group.clone(),
            n: counts.n,
            selection_rate: counts.selection_rate(),
            false_positive_rate: counts.false_positive_rate(),
            false_negative_rate: counts.false_negative_rate(),
            compared,
        });
    }
    let spread = |values: &[f64]| {
        (values.len() >= 2).then(|| {
            let max = values.iter().copied().fold(f64::MIN, f64::max);
            let min = values.iter().copied().fold(f64::MAX, f64::min);
            (min, max)
        })
    };
    let sel = spread(&selection);
    Fairness {
        groups: rows,
        demographic_parity_difference: sel.map(|(min, max)| max - min),
        demographic_parity_ratio: sel.map(|(min, max)| if max > 0.0 { min / max } else { 1.0 }),
        equal_opportunity_difference: spread(&tpr).map(|(min, max)| max - min),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sketch::FeatureValue;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn psi_by_hand() {
        // Proportions 0.5/0.5 against 0.25/0.75:
        // (0.25-0.5)*ln(0.25/0.5) + (0.75-0.5)*ln(0.75/0.5) = 0.25*ln 2 + 0.25*ln 1.5
        let expected = 0.25 * 2f64.ln() + 0.25 * 1.5f64.ln();
        assert!(close(
            psi(&[50, 50], &[25, 75]).unwrap_or_default(),
            expected
        ));
        assert!(
            close(psi(&[10, 30], &[1, 3]).unwrap_or(1.0), 0.0),
            "same shape"
        );
    }

    #[test]
    fn psi_empty_bins_count_as_a_hundredth_of_a_percent() {
        // Baseline all in bin 0, current all in bin 1:
        // (1e-4 - 1)*ln(1e-4/1) + (1 - 1e-4)*ln(1/1e-4) = 2*(1-1e-4)*ln(1e4)
        let expected = 2.0 * (1.0 - 1e-4) * 1e4f64.ln();
        assert!(close(psi(&[10, 0], &[0, 10]).unwrap_or_default(), expected));
        assert_eq!(psi(&[0, 0], &[1, 2]), None, "an empty side has no PSI");
    }

    #[test]
    fn js_by_hand() {
        assert!(close(js_distance(&[5, 5], &[5, 5]).unwrap_or(1.0), 0.0));
        assert!(
            close(js_distance(&[1, 0], &[0, 1]).unwrap_or_default(), 1.0),
            "disjoint is 1"
        );
        // p = (1, 0), q = (1/2, 1/2): m = (3/4, 1/4);
        // D = 1/2 [1*log2(4/3)] + 1/2 [1/2 log2(2/3) + 1/2 log2(2)]
        let d = 0.5 * (4.0f64 / 3.0).log2() + 0.5 * (0.5 * (2.0f64 / 3.0).log2() + 0.5);
        assert!(close(
            js_distance(&[4, 0], &[3, 3]).unwrap_or_default(),
            d.sqrt()
        ));
        assert_eq!(js_distance(&[], &[]), None);
    }

    #[test]
    fn numeric_bins_follow_the_baseline_quantiles() {
        let mut base = Feature::default();
        for v in 1..=100 {
            base.add(&FeatureValue::Number(v as f64));
        }
        let mut same = Feature::default();
        for v in 1..=100 {
            same.add(&FeatureValue::Number(v as f64));
        }
        let (b, c) = binned(&base, &same, 10);
        assert_eq!(
            b.len(),
            11,
            "9 edges give 10 bins, plus one for non-numbers"
        );
        assert!(b[..10].iter().all(|n| (9..=11).contains(n)), "{b:?}");
        assert_eq!(b, c);
        assert!(close(psi(&b, &c).unwrap_or(1.0), 0.0));
    }

    #[test]
    fn a_discrete_feature_gets_fewer_bins_and_a_type_change_is_drift() {
        let mut base = Feature::default();
        for v in [1.0, 1.0, 1.0, 2.0] {
            base.add(&FeatureValue::Number(v));
        }
        let mut current = Feature::default();
        current.add(&FeatureValue::Category("n/a".into()));
        let (b, c) = binned(&base, &current, 10);
        // Nine deciles collapse to the edges 1 and 2: (..1], (1, 2], (2..), non-numeric.
        assert_eq!(b, vec![3, 1, 0, 0]);
        assert_eq!(c, vec![0, 0, 0, 1]);
        assert!(close(js_distance(&b, &c).unwrap_or_default(), 1.0));
    }

    #[test]
    fn categorical_bins_are_the_union_of_categories() {
        let mut base = Feature::default();
        let mut current = Feature::default();
        for c in ["a", "a", "b"] {
            base.add(&FeatureValue::Category(c.into()));
        }
        for c in ["b", "c"] {
            current.add(&FeatureValue::Category(c.into()));
        }
        // `b` is on both sides; `a` (gone) and `c` (new) are compared together as OTHER.
        assert_eq!(binned(&base, &current, 10), (vec![1, 2, 0], vec![1, 1, 0]));
    }

    #[test]
    fn fairness_by_hand() {
        let mut a = GroupCounts::default();
        let mut b = GroupCounts::default();
        // a: 6 of 10 selected; b: 3 of 10; labels make a's FPR 2/4, b's FNR 3/5.
        for (p, l) in [(true, true); 4]
            .into_iter()
            .chain([(true, false); 2])
            .chain([(false, false); 2])
            .chain([(false, true); 2])
        {
            a.add(p, Some(l));
        }
        for (p, l) in [(true, true); 2]
            .into_iter()
            .chain([(true, false); 1])
            .chain([(false, false); 4])
            .chain([(false, true); 3])
        {
            b.add(p, Some(l));
        }
        let (na, nb) = ("a".to_string(), "b".to_string());
        let tiny = GroupCounts {
            n: 2,
            selected: 0,
            ..Default::default()
        };
        let nt = "tiny".to_string();
        let f = fairness([(&na, &a), (&nb, &b), (&nt, &tiny)], 5);
        assert!(close(
            f.demographic_parity_difference.unwrap_or_default(),
            0.3
        ));
        assert!(close(f.demographic_parity_ratio.unwrap_or_default(), 0.5));
        // TPR a = 4/6, b = 2/5.
        assert!(close(
            f.equal_opportunity_difference.unwrap_or_default(),
            4.0 / 6.0 - 0.4
        ));
        assert!(close(
            f.groups[0].false_positive_rate.unwrap_or_default(),
            0.5
        ));
        assert!(close(
            f.groups[1].false_negative_rate.unwrap_or_default(),
            0.6
        ));
        assert!(
            !f.groups[2].compared,
            "a group under the minimum size is reported, not compared"
        );
    }

    #[test]
    fn one_group_has_no_comparison() {
        let g = GroupCounts {
            n: 50,
            selected: 10,
            ..Default::default()
        };
        let name = "only".to_string();
        assert_eq!(fairness([(&name, &g)], 30).demographic_parity_ratio, None);
    }
}
