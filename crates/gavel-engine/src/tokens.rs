//! Token counting for budget estimates, with OpenAI's real BPE tokenizers.
//!
//! OpenAI models are counted with their own encoding (o200k for the gpt-4o / gpt-4.1 / o-series
//! families, cl100k for older ones). Other models are counted with cl100k: close to, but not
//! exactly, their own tokenizers, so budgets on them are estimates (docs/decide.md says so).
//! Settlement with the upstream's reported usage corrects the estimate.

/// Tokens a chat message costs beyond its text (role and separators), as OpenAI documents.
const PER_MESSAGE_OVERHEAD: u64 = 3;
/// Tokens that prime every reply.
const REPLY_PRIMING: u64 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    O200k,
    Cl100k,
}

impl Encoding {
    pub fn for_model(model_name: &str) -> Encoding {
        let name = model_name.to_ascii_lowercase();
        let o200k = [
            "gpt-4o",
            "gpt-4.1",
            "gpt-4.5",
            "gpt-5",
            "o1",
            "o3",
            "o4",
            "chatgpt-4o",
        ];
        if o200k.iter().any(|prefix| name.starts_with(prefix)) {
            Encoding::O200k
        } else {
            Encoding::Cl100k
        }
    }

    pub fn count(self, text: &str) -> u64 {
        let tokenizer = match self {
            Encoding::O200k => bpe_openai::o200k_base(),
            Encoding::Cl100k => bpe_openai::cl100k_base(),
        };
        tokenizer.count(text) as u64
    }

    /// Prompt tokens of a chat: every message's text plus the per-message overhead.
    pub fn count_chat<'a>(self, texts: impl Iterator<Item = &'a str>) -> u64 {
        let mut total = REPLY_PRIMING;
        for text in texts {
            total = total
                .saturating_add(PER_MESSAGE_OVERHEAD)
                .saturating_add(self.count(text));
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_match_published_tokenizations() {
        // "hello world" is two tokens in both cl100k_base and o200k_base (tiktoken).
        assert_eq!(Encoding::Cl100k.count("hello world"), 2);
        assert_eq!(Encoding::O200k.count("hello world"), 2);
        assert_eq!(Encoding::O200k.count(""), 0);
        assert!(Encoding::Cl100k.count(&"lorem ipsum ".repeat(100)) > 100);
    }

    #[test]
    fn picks_the_model_family_encoding() {
        assert_eq!(Encoding::for_model("gpt-4o-mini"), Encoding::O200k);
        assert_eq!(Encoding::for_model("gpt-4"), Encoding::Cl100k);
        assert_eq!(
            Encoding::for_model("llama-3.1-8b-instruct"),
            Encoding::Cl100k
        );
    }

    #[test]
    fn chat_overhead_is_added_per_message() {
        let n = Encoding::O200k.count_chat(["hello world", "hello world"].into_iter());
        assert_eq!(n, 3 + 2 * (3 + 2));
    }
}
