//! tiktoken's `encode_ordinary`, counted: the pre-tokenizer cuts text into pieces with the
//! encoding's published split pattern, and each piece is counted by byte-pair merging
//! (`merge.rs`) against the vocabulary (`vocab.rs`).
//!
//! The split patterns end in `\s+(?!\S)|\s+`: a run of whitespace leaves its last character to
//! the next piece when a non-space follows (so " word" keeps its space). regex-automata has no
//! look-ahead, so the pattern is compiled as three patterns searched together (leftmost-first:
//! at one start, an earlier pattern wins, as an earlier alternative would):
//!
//! 0. the alternatives before the look-ahead, plus `\s+$`: a whitespace run that reaches the end
//!    of the text is taken whole (nothing follows it, so the look-ahead holds);
//! 1. `\s+\s`: a run of two or more whitespace characters not at the end. The search reports it
//!    one character too long (through the character after the run's last but one); that last
//!    character is dropped, which is exactly what `\s+(?!\S)` keeps;
//! 2. `\s+`: a single whitespace character before a non-space, as the final alternative.

use std::cell::RefCell;
use std::sync::LazyLock;

use regex_automata::meta::{Cache, Regex};
use regex_automata::{Anchored, Input};

use super::merge::{self, Scratch};
use super::vocab::{self, Vocab};

/// tiktoken's o200k_base split pattern, as published (`openai_public.py`).
const O200K_PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"|\s*[\r\n]+",
    r"|\s+(?!\S)",
    r"|\s+",
);

/// tiktoken's cl100k_base split pattern as first published. tiktoken now writes it with
/// possessive quantifiers (`?+`, `++`) and `\s*[\r\n]` for `\s*[\r\n]+`: the same pieces, found
/// with less backtracking; regex-automata needs no backtracking and does not parse `?+`.
const CL100K_PATTERN: &str = concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)",
    r"|[^\r\n\p{L}\p{N}]?\p{L}+",
    r"|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*",
    r"|\s*[\r\n]+",
    r"|\s+(?!\S)",
    r"|\s+",
);

/// The tail both patterns share, which is emulated.
const LOOKAHEAD_TAIL: &str = r"|\s+(?!\S)|\s+";
/// The pattern whose match carries one extra character, dropped.
const LOOKAHEAD_PATTERN: usize = 1;

/// The three patterns standing for `published` (see the module comment), if it ends as expected.
fn emulated(published: &str) -> Option<[String; 3]> {
    let head = published.strip_suffix(LOOKAHEAD_TAIL)?;
    Some([format!(r"{head}|\s+$"), r"\s+\s".into(), r"\s+".into()])
}

/// One encoding: its split pattern and its vocabulary.
pub(super) struct Counter {
    /// Index of this encoding's cache in [`Work`].
    slot: usize,
    /// `None` only if the pattern failed to compile (a test proves it does not); text is then
    /// counted one token per byte, an upper bound.
    split: Option<Regex>,
    vocab: &'static Vocab,
}

pub(super) static O200K_BASE: LazyLock<Counter> =
    LazyLock::new(|| Counter::new(0, O200K_PATTERN, &vocab::O200K_BASE));
pub(super) static CL100K_BASE: LazyLock<Counter> =
    LazyLock::new(|| Counter::new(1, CL100K_PATTERN, &vocab::CL100K_BASE));

/// Per-thread search state: each encoding's regex cache and the merge scratch.
#[derive(Default)]
struct Work {
    caches: [Option<Cache>; 2],
    scratch: Scratch,
}

thread_local! {
    static WORK: RefCell<Work> = RefCell::new(Work::default());
}

impl Counter {
    fn new(slot: usize, published: &str, vocab: &'static Vocab) -> Counter {
        let split = emulated(published).and_then(|patterns| Regex::new_many(&patterns).ok());
        Counter { slot, split, vocab }
    }

    /// Tokens of `text`, as tiktoken's `encode_ordinary(text).len()`.
    pub(super) fn count(&self, text: &str) -> usize {
        WORK.with(|work| match work.try_borrow_mut() {
            Ok(mut work) => self.count_with(&mut work, text),
            Err(_) => self.count_with(&mut Work::default(), text),
        })
    }

    fn count_with(&self, work: &mut Work, text: &str) -> usize {
        if self.split.is_none() {
            return text.len();
        }
        let mut total = 0;
        self.split_with(work, text, |piece, scratch| {
            total += merge::count_piece(self.vocab, piece.as_bytes(), scratch);
        });
        total
    }

    /// Calls `each` with the pieces of `text`, in order; they cover it exactly. Does nothing
    /// without a pre-tokenizer.
    fn split_with<'t>(
        &self,
        work: &mut Work,
        text: &'t str,
        mut each: impl FnMut(&'t str, &mut Scratch),
    ) {
        let Work { caches, scratch } = work;
        let (Some(regex), Some(cache)) = (&self.split, caches.get_mut(self.slot)) else {
            return;
        };
        let cache = cache.get_or_insert_with(|| regex.create_cache());
        let mut input = Input::new(text).anchored(Anchored::Yes);
        let mut at = 0;
        while at < text.len() {
            input.set_start(at);
            let mut end = match regex.search_with(cache, &input) {
                Some(m) if m.pattern().as_usize() == LOOKAHEAD_PATTERN => text
                    .get(..m.end())
                    .and_then(|s| s.char_indices().next_back())
                    .map_or(m.end(), |(last, _)| last),
                Some(m) => m.end(),
                // Every character matches some alternative; should none, the rest is one piece.
                None => text.len(),
            };
            if end <= at {
                end = text
                    .get(at..)
                    .and_then(|rest| rest.chars().next())
                    .map_or(text.len(), |c| at + c.len_utf8());
            }
            if let Some(piece) = text.get(at..end) {
                each(piece, scratch);
            }
            at = end;
        }
    }
}

#[cfg(test)]
impl Counter {
    /// The pre-tokenizer's pieces of `text`.
    pub(super) fn pieces<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut pieces = Vec::new();
        self.split_with(&mut Work::default(), text, |piece, _| pieces.push(piece));
        pieces
    }

    pub(super) fn compiled(&self) -> bool {
        self.split.is_some()
    }

    pub(super) fn vocab(&self) -> &'static Vocab {
        self.vocab
    }
}
