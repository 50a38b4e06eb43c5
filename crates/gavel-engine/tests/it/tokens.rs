//! The memoised, chunked count equals the tokenizer's own count on real third-party text.

use gavel_engine::Encoding;

#[test]
fn counts_equal_bpe_openai_on_every_arena_hard_prompt() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/corpora/benign/arena_hard_v0.1_questions.jsonl"
    );
    let text = std::fs::read_to_string(path)
        .expect("the shared corpora sit beside the project (see shared/corpora/README.md)");
    let mut checked = 0;
    for line in text.lines() {
        let prompt: serde_json::Value = serde_json::from_str(line).unwrap();
        let prompt = prompt["prompt"].as_str().unwrap();
        assert_eq!(
            Encoding::O200k.count(prompt),
            bpe_openai::o200k_base().count(prompt) as u64
        );
        assert_eq!(
            Encoding::Cl100k.count(prompt),
            bpe_openai::cl100k_base().count(prompt) as u64
        );
        checked += 1;
    }
    assert_eq!(checked, 500);
}
