//! Token counting for budget estimates, with OpenAI's real BPE tokenizers.
//!
//! OpenAI models are counted with their own encoding (o200k for the gpt-4o / gpt-4.1 / o-series
//! families, cl100k for older ones). Other models are counted with cl100k: close to, but not
//! exactly, their own tokenizers, so budgets on them are estimates (docs/decide.md says so).
//! Settlement with the upstream's reported usage corrects the estimate.
//!
//! Counting is the costliest step of a decision: the pre-tokenizer's regular expression and the
//! byte-pair merges. Text is first cut into chunks at boundaries the pre-tokenizer always
//! respects (a single space between a non-space and an ASCII letter: the space starts the next
//! word's token in both encodings), and each thread memoises the token count of short chunks,
//! which repeat heavily in real text. The memo changes no count: a property test checks
//! equality with the tokenizer's own `count` on adversarial text. It is bounded and simply
//! cleared when full.

use std::cell::RefCell;

use rustc_hash::FxHashMap;

/// Tokens a chat message costs beyond its text (role and separators), as OpenAI documents.
const PER_MESSAGE_OVERHEAD: u64 = 3;
/// Tokens that prime every reply.
const REPLY_PRIMING: u64 = 3;

/// Chunks up to this long are memoised; longer ones (long numbers, code, runs of symbols) are
/// counted each time.
const MEMO_MAX_CHUNK_BYTES: usize = 48;
/// Entries per encoding per thread (a few MiB at most).
const MEMO_CAPACITY: usize = 1 << 16;

thread_local! {
    static MEMO: RefCell<[FxHashMap<Box<[u8]>, u32>; 2]> = RefCell::new([FxHashMap::default(), FxHashMap::default()]);
}

/// Splits `text` before every space that follows a non-whitespace byte and precedes an ASCII
/// letter. Both encodings' pre-tokenizers end a token there (the space is the optional prefix of
/// the next word), so counting chunk by chunk equals counting the whole.
fn chunks(text: &str) -> impl Iterator<Item = &str> {
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 1;
    std::iter::from_fn(move || {
        while i + 1 < bytes.len() {
            let at = i;
            i += 1;
            let boundary = bytes.get(at) == Some(&b' ')
                && bytes.get(at - 1).is_some_and(|b| !b.is_ascii_whitespace())
                && bytes.get(at + 1).is_some_and(u8::is_ascii_alphabetic);
            if boundary {
                let chunk = text.get(start..at);
                start = at;
                return chunk;
            }
        }
        if start < bytes.len() {
            let chunk = text.get(start..);
            start = bytes.len();
            return chunk;
        }
        None
    })
}

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

    fn tokenizer(self) -> &'static bpe_openai::Tokenizer {
        match self {
            Encoding::O200k => bpe_openai::o200k_base(),
            Encoding::Cl100k => bpe_openai::cl100k_base(),
        }
    }

    pub fn count(self, text: &str) -> u64 {
        let tokenizer = self.tokenizer();
        MEMO.with(|memo| {
            let mut memo = memo.borrow_mut();
            let map = &mut memo[self as usize];
            let mut total = 0u64;
            for chunk in chunks(text) {
                if chunk.len() > MEMO_MAX_CHUNK_BYTES {
                    total += tokenizer.count(chunk) as u64;
                    continue;
                }
                let n = match map.get(chunk.as_bytes()) {
                    Some(&n) => n,
                    None => {
                        let n = u32::try_from(tokenizer.count(chunk)).unwrap_or(u32::MAX);
                        if map.len() >= MEMO_CAPACITY {
                            map.clear();
                        }
                        map.insert(chunk.as_bytes().into(), n);
                        n
                    }
                };
                total += u64::from(n);
            }
            total
        })
    }

    /// Empties this thread's memo, so a benchmark can measure counting from cold.
    pub fn clear_memo() {
        MEMO.with(|memo| memo.borrow_mut().iter_mut().for_each(FxHashMap::clear));
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

    proptest::proptest! {
        #[test]
        fn memoised_counts_equal_the_tokenizers_own(
            text in ".{0,200}",
            words in proptest::collection::vec("[a-zA-Z]{1,12}|[0-9]{1,40}| {1,3}|[.,;:!?'\"()\\[\\]{}<>/-]{1,3}|\n|\r\n|\t|'s|'ll|é|ß|日本|🙂|\u{200b}", 0..120),
        ) {
            let text = format!("{text}{}", words.concat());
            for encoding in [Encoding::O200k, Encoding::Cl100k] {
                let expected = encoding.tokenizer().count(text.as_str()) as u64;
                proptest::prop_assert_eq!(encoding.count(&text), expected);
                proptest::prop_assert_eq!(encoding.count(&text), expected, "second, memoised count");
            }
        }
    }

    #[test]
    fn chunks_cover_the_text_and_cut_only_before_space_letter() {
        let text = "Hello world,  two spaces\n next (paren) 3 apples 'quoted' done";
        let parts: Vec<&str> = chunks(text).collect();
        assert_eq!(parts.concat(), text);
        assert_eq!(
            parts,
            [
                "Hello",
                " world,  two",
                " spaces\n next (paren) 3",
                " apples 'quoted'",
                " done"
            ]
        );
        assert!(parts.iter().all(|p| !p.is_empty()));
        assert_eq!(chunks("").count(), 0);
        assert_eq!(chunks("a").collect::<Vec<_>>(), ["a"]);
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
