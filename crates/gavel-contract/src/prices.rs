//! The price table that ships with gavel: USD per one million tokens, by model snapshot.
//! A contract's `prices` entries override or extend it. Figures are list prices published by
//! the providers; check them against your own agreement.

use std::collections::BTreeMap;

use crate::model::Price;

/// Snapshot, input and output price, and the most prompt tokens one image counts for where the
/// provider publishes how images are counted. OpenAI's tile models: 85 tokens plus 170 per 512 px
/// tile, at most 8 tiles once the image is scaled to fit 2048 px and its short side to 768 px
/// (1,445; gpt-4o and gpt-4.1); gpt-4o-mini counts 2,833 plus 5,667 per tile (48,169), so that
/// an image costs what it costs on gpt-4o; the patch models at most 1,536 patches of 32 px times
/// their multiplier (gpt-4.1-mini 1.62). Anthropic: width times height / 750 for an image scaled
/// to about 1.15 megapixels, about 1,600. Last, what an image sent with `detail: low` counts
/// for: the tile models' base figure alone (85; gpt-4o-mini 2,833); the patch models and
/// Anthropic's have no such mode.
type Row = (&'static str, f64, f64, Option<u64>, Option<u64>);
const DEFAULT_PRICES: &[Row] = &[
    ("gpt-4o-2024-08-06", 2.5, 10.0, Some(1_445), Some(85)),
    ("gpt-4o-2024-11-20", 2.5, 10.0, Some(1_445), Some(85)),
    (
        "gpt-4o-mini-2024-07-18",
        0.15,
        0.6,
        Some(48_169),
        Some(2_833),
    ),
    ("gpt-4.1-2025-04-14", 2.0, 8.0, Some(1_445), Some(85)),
    ("gpt-4.1-mini-2025-04-14", 0.4, 1.6, Some(2_489), None),
    ("o3-mini-2025-01-31", 1.1, 4.4, None, None),
    ("claude-3-5-sonnet-20241022", 3.0, 15.0, Some(1_600), None),
    ("claude-3-5-haiku-20241022", 0.8, 4.0, Some(1_600), None),
    ("text-embedding-3-small", 0.02, 0.0, None, None),
    ("text-embedding-3-large", 0.13, 0.0, None, None),
];

pub(crate) fn default_prices() -> BTreeMap<String, Price> {
    DEFAULT_PRICES
        .iter()
        .map(
            |&(snapshot, input, output, image_tokens, low_detail_image_tokens)| {
                let price = Price {
                    input,
                    output,
                    image_tokens,
                    low_detail_image_tokens,
                };
                (snapshot.to_string(), price)
            },
        )
        .collect()
}
