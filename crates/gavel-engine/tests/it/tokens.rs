//! The memoised, chunked count equals bpe-openai's (itself checked against tiktoken) on real
//! third-party text: every arena-hard question and every in-the-wild jailbreak prompt.

use gavel_engine::Encoding;

fn corpus(relative: &str) -> String {
    let path = format!(
        "{}/../../../shared/corpora/{relative}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .expect("the shared corpora sit beside the project (see shared/corpora/README.md)")
}

fn assert_counts_equal_bpe_openai(prompt: &str) {
    for (encoding, oracle) in [
        (Encoding::O200k, bpe_openai::o200k_base()),
        (Encoding::Cl100k, bpe_openai::cl100k_base()),
    ] {
        let expected = oracle.count(prompt) as u64;
        assert_eq!(encoding.count(prompt), expected, "{encoding:?}: {prompt:?}");
        assert_eq!(
            encoding.count(prompt),
            expected,
            "{encoding:?}, memoised: {prompt:?}"
        );
    }
}

#[test]
fn counts_equal_bpe_openai_on_every_arena_hard_prompt() {
    let text = corpus("benign/arena_hard_v0.1_questions.jsonl");
    let mut checked = 0;
    for line in text.lines() {
        let prompt: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_counts_equal_bpe_openai(prompt["prompt"].as_str().unwrap());
        checked += 1;
    }
    assert_eq!(checked, 500);
}

#[test]
fn counts_equal_bpe_openai_on_every_in_the_wild_jailbreak() {
    let prompts: Vec<String> =
        serde_json::from_str(&corpus("attacks/inthewild_jailbreaks.json")).unwrap();
    for prompt in &prompts {
        assert_counts_equal_bpe_openai(prompt);
    }
    assert_eq!(prompts.len(), 666);
}
