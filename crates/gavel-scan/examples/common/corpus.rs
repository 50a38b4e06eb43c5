//! What the measuring examples read from the shared corpora.

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The arena-hard prompts (third-party, benign) under `dir`, in file order.
pub fn arena_hard_prompts(dir: &str) -> Res<Vec<String>> {
    let raw = std::fs::read_to_string(format!("{dir}/benign/arena_hard_v0.1_questions.jsonl"))?;
    let mut prompts = Vec::new();
    for line in raw.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if let Some(p) = v.get("prompt").and_then(|p| p.as_str()) {
            prompts.push(p.to_owned());
        }
    }
    Ok(prompts)
}

/// The longest prefix of `text` of at most `n` bytes that ends on a character boundary.
pub fn prefix(text: &str, n: usize) -> &str {
    let mut end = n.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}
