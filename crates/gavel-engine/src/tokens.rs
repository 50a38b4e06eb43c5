//! Token counting for budget estimates, exactly as OpenAI's tiktoken counts.
//!
//! OpenAI models are counted with their own encoding (o200k for the gpt-4o / gpt-4.1 / o-series
//! families, cl100k for older ones). Other models are counted with cl100k: close to, but not
//! exactly, their own tokenizers, so budgets on them are estimates (docs/decide.md says so).
//! Settlement with the upstream's reported usage corrects the estimate.
//!
//! The counter is our own, built for memory: tiktoken's published vocabularies are vendored in
//! `data/` and `build.rs` turns each into three read-only tables embedded in the binary (token
//! bytes in rank order, their offsets, and an open-addressing hash index from bytes to rank, laid
//! out at build time), so nothing is built at run time and an encoding costs at most its tables'
//! pages (3.4 MB for o200k, 1.6 MB for cl100k, read-only and file-backed) plus its compiled split
//! pattern (about 1 MB of heap for o200k); first use takes a few milliseconds, to compile the
//! pattern. (bpe-openai, used before, took 67 MB and 30 MB.) Text is cut into
//! pieces with the encoding's split pattern (`counter.rs`: regex-automata, with tiktoken's
//! `\s+(?!\S)` look-ahead emulated), and each piece counts 1 if it is a token, else the parts
//! left by tiktoken's byte-pair merge (`merge.rs`: lowest-ranked adjacent pair first, O(n log n)
//! on long pieces). Tests check every count against the `bpe-openai` crate, itself checked
//! against tiktoken.
//!
//! Counting is the costliest step of a decision: the pre-tokenizer's regular expression and the
//! byte-pair merges. Text is first cut into chunks at boundaries the pre-tokenizer always
//! respects (a single space between a non-space and an ASCII letter: the space starts the next
//! word's token in both encodings), and each thread memoises the token count of short chunks,
//! which repeat heavily in real text. The memo changes no count: a property test checks
//! equality with the counter's uncached count and with `bpe-openai` on adversarial text. It is
//! bounded and simply cleared when full.

mod counter;
mod hash;
mod merge;
mod vocab;

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

    fn counter(self) -> &'static counter::Counter {
        match self {
            Encoding::O200k => &counter::O200K_BASE,
            Encoding::Cl100k => &counter::CL100K_BASE,
        }
    }

    pub fn count(self, text: &str) -> u64 {
        let counter = self.counter();
        MEMO.with(|memo| {
            let mut memo = memo.borrow_mut();
            let map = &mut memo[self as usize];
            let mut total = 0u64;
            for chunk in chunks(text) {
                if chunk.len() > MEMO_MAX_CHUNK_BYTES {
                    total += counter.count(chunk) as u64;
                    continue;
                }
                let n = match map.get(chunk.as_bytes()) {
                    Some(&n) => n,
                    None => {
                        let n = u32::try_from(counter.count(chunk)).unwrap_or(u32::MAX);
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

    fn oracle(encoding: Encoding) -> &'static bpe_openai::Tokenizer {
        match encoding {
            Encoding::O200k => bpe_openai::o200k_base(),
            Encoding::Cl100k => bpe_openai::cl100k_base(),
        }
    }

    const BOTH: [Encoding; 2] = [Encoding::O200k, Encoding::Cl100k];

    /// Text built to stress the pre-tokenizer and the merges: scripts with and without case,
    /// combining marks, emoji sequences, zero-width and Unicode spaces, digit runs, whitespace
    /// runs (trailing too), CR LF, contractions in both cases (and the long s and Kelvin sign that
    /// case-fold onto s and k), punctuation runs, and long single pieces (runs of one letter tie
    /// everywhere, so they test leftmost-first).
    fn adversarial_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let atom = prop_oneof![
            "[a-zA-Z]{1,12}",
            "[A-Z]{1,6}[a-z]{0,6}",
            "[0-9]{1,40}",
            "[ \t]{1,6}",
            " {1,3}",
            "[\r\n]{1,3}",
            Just("\r\n".to_string()),
            "[.,;:!?'\"()\\[\\]{}<>/\\\\|@#$%^&*_+=~`-]{1,6}",
            "'(s|t|re|ve|m|ll|d|S|T|RE|VE|M|LL|D|Ll)",
            "[\u{a0}\u{85}\u{b}\u{c}\u{2000}-\u{200a}\u{2028}\u{2029}\u{3000}]{1,3}",
            "[\u{200b}-\u{200d}\u{2060}\u{feff}]{1,2}",
            "[а-яА-ЯёЁ]{1,8}",
            "[\u{4e00}-\u{4e80}ぁ-ゖァ-ヺ]{1,6}",
            "[\u{600}-\u{6ff}\u{900}-\u{97f}]{1,6}",
            "[àâäéèêëïîôöùûüÿçœæßſ\u{212a}]{1,4}",
            "[a-z]{1,6}[\u{300}-\u{36f}]{1,3}",
            "[😀-🙏🚀-🛿]{1,4}",
            "👨\u{200d}👩\u{200d}👧|🏳\u{fe0f}\u{200d}🌈|👍🏽",
            "[\u{1d400}-\u{1d7ff}①-⑳²³¼½]{1,4}",
            "[\u{0}-\u{1f}\u{7f}]{1,3}",
            "[a-z]{60,300}",
            "[A-Za-z]{60,200}",
            "a{60,300}",
            "(ab|ba|aa|ing|the){20,120}",
            "[!-/]{60,200}",
            ".{1,8}",
        ];
        proptest::collection::vec(atom, 0..60).prop_map(|atoms| atoms.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        #[test]
        fn counts_equal_bpe_openai_on_adversarial_text(text in adversarial_text()) {
            for encoding in BOTH {
                let expected = oracle(encoding).count(text.as_str());
                proptest::prop_assert_eq!(
                    encoding.counter().pieces(&text),
                    oracle(encoding).split(&text).collect::<Vec<_>>(),
                    "pieces, {:?}", encoding
                );
                proptest::prop_assert_eq!(encoding.counter().count(&text), expected, "uncached, {:?}", encoding);
                proptest::prop_assert_eq!(encoding.count(&text), expected as u64, "chunked, {:?}", encoding);
                proptest::prop_assert_eq!(encoding.count(&text), expected as u64, "memoised, {:?}", encoding);
            }
        }

        #[test]
        fn memoised_counts_equal_the_tokenizers_own(
            text in ".{0,200}",
            words in proptest::collection::vec("[a-zA-Z]{1,12}|[0-9]{1,40}| {1,3}|[.,;:!?'\"()\\[\\]{}<>/-]{1,3}|\n|\r\n|\t|'s|'ll|é|ß|日本|🙂|\u{200b}", 0..120),
        ) {
            let text = format!("{text}{}", words.concat());
            for encoding in BOTH {
                let expected = oracle(encoding).count(text.as_str()) as u64;
                proptest::prop_assert_eq!(encoding.count(&text), expected);
                proptest::prop_assert_eq!(encoding.count(&text), expected, "second, memoised count");
            }
        }
    }

    #[test]
    fn split_patterns_compile() {
        assert!(counter::O200K_BASE.compiled());
        assert!(counter::CL100K_BASE.compiled());
    }

    #[test]
    fn tables_hold_bpe_openais_vocabulary_and_find_every_token() {
        for encoding in BOTH {
            let vocab = encoding.counter().vocab();
            let bpe = &oracle(encoding).bpe;
            assert_eq!(vocab.len() as usize, bpe.num_tokens());
            let mut longest = 0;
            for id in 0..vocab.len() {
                let token = vocab.token(id).unwrap();
                assert_eq!(token, bpe.token_bytes(id), "{encoding:?} token {id}");
                assert_eq!(vocab.rank(token), Some(id), "{encoding:?} token {id}");
                longest = longest.max(token.len());
            }
            assert_eq!(vocab.max_token_len(), longest);
            assert_eq!(vocab.token(vocab.len()), None);
            assert_eq!(vocab.rank(b""), None);
            assert_eq!(vocab.rank(&[b'a'; 300]), None);
            assert!(
                vocab.table_bytes() < 5 << 20,
                "{encoding:?}: {} bytes",
                vocab.table_bytes()
            );
        }
    }

    #[test]
    fn long_single_pieces_count_exactly() {
        // One piece each (a letter run, a punctuation run, a whitespace run), past the small
        // path, including sizes around the tree's block and power-of-two boundaries.
        let mut texts = Vec::new();
        for n in [65, 100, 127, 128, 129, 255, 256, 257, 1000, 4099, 20_000] {
            texts.push("a".repeat(n));
            texts.push("ab".repeat(n / 2));
            texts.push(
                (0..n)
                    .map(|i| char::from(b'a' + (i * 7 + i / 3) as u8 % 26))
                    .collect(),
            );
            texts.push("Supercalifragilistic".repeat(n / 20 + 1));
            texts.push("=-".repeat(n / 2));
            texts.push(" ".repeat(n));
            texts.push("日本語".repeat(n / 9 + 1));
        }
        for text in &texts {
            for encoding in BOTH {
                let expected = oracle(encoding).count(text.as_str());
                assert_eq!(
                    encoding.counter().count(text),
                    expected,
                    "{encoding:?} {} bytes",
                    text.len()
                );
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
