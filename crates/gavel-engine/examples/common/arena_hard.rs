//! The arena-hard prompts (third-party, benign) that the token examples count. The examples
//! stop on a missing corpus (it sits beside the project: see shared/corpora/README.md).

/// Every prompt of `shared/corpora/benign/arena_hard_v0.1_questions.jsonl`, in file order.
pub fn prompts() -> Vec<String> {
    let corpus = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/corpora/benign/arena_hard_v0.1_questions.jsonl"
    );
    std::fs::read_to_string(corpus)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["prompt"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}
