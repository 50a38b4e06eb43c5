//! The price table that ships with gavel: USD per one million tokens, by model snapshot.
//! A contract's `prices` entries override or extend it. Figures are list prices published by
//! the providers; check them against your own agreement.

use std::collections::BTreeMap;

use crate::model::Price;

const DEFAULT_PRICES: &[(&str, f64, f64)] = &[
    ("gpt-4o-2024-08-06", 2.5, 10.0),
    ("gpt-4o-2024-11-20", 2.5, 10.0),
    ("gpt-4o-mini-2024-07-18", 0.15, 0.6),
    ("gpt-4.1-2025-04-14", 2.0, 8.0),
    ("gpt-4.1-mini-2025-04-14", 0.4, 1.6),
    ("o3-mini-2025-01-31", 1.1, 4.4),
    ("claude-3-5-sonnet-20241022", 3.0, 15.0),
    ("claude-3-5-haiku-20241022", 0.8, 4.0),
    ("text-embedding-3-small", 0.02, 0.0),
    ("text-embedding-3-large", 0.13, 0.0),
];

pub(crate) fn default_prices() -> BTreeMap<String, Price> {
    DEFAULT_PRICES
        .iter()
        .map(|&(snapshot, input, output)| (snapshot.to_string(), Price { input, output }))
        .collect()
}
