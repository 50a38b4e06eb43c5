//! Streaming scanner for model output with a hold-back window.
//!
//! Invariant: no byte of a finding's span is released before the finding is reported. Bytes are
//! released only up to `HOLD_BACK` bytes before the end of what has arrived, and never past the
//! start of a candidate that the detectors could not decide yet (a number or token still
//! growing at the end of the buffer). `HOLD_BACK` covers the furthest a finding can start before
//! the anchor that reveals it (an e-mail's local part before `@`, at most 64 bytes).
//!
//! Each push rescans only a short window (from the earliest undecided candidate, or a little
//! before the end of the previous chunk so that anchors split across chunks are found), so the
//! cost per chunk is proportional to the chunk, and the findings are exactly those of a scan of
//! the whole text (property-tested).

use std::sync::Arc;

use crate::detect::Sink;
use crate::{Finding, Scanners};

/// Bytes always held back from the end of the stream.
pub const HOLD_BACK: usize = 128;
/// Rescanned bytes before the previous end, so that an anchor split across chunks is seen.
const OVERLAP: usize = 64;
/// Left context kept before the scan window for detectors that look back.
const CONTEXT: usize = 256;

/// What one push produced. Check `findings` before forwarding `released`: a blocking finding
/// means the stream must end (with a governance error event) instead.
#[derive(Debug)]
pub struct StreamEvent<'a> {
    /// Findings reported for the first time, with absolute byte spans in the stream.
    pub findings: &'a [Finding],
    /// Text now safe to forward, continuing exactly where the previous release stopped.
    pub released: &'a str,
}

#[derive(Debug)]
pub struct StreamScanner {
    scanners: Arc<Scanners>,
    /// Unreleased text plus left context; `buf[0]` is at stream offset `base`.
    buf: String,
    base: usize,
    released: usize,
    scan_from: usize,
    reported: Vec<(usize, usize, &'static str)>,
    found: Vec<Finding>,
    fresh: Vec<Finding>,
}

impl StreamScanner {
    pub fn new(scanners: Arc<Scanners>) -> Self {
        StreamScanner {
            scanners,
            buf: String::new(),
            base: 0,
            released: 0,
            scan_from: 0,
            reported: Vec::new(),
            found: Vec::new(),
            fresh: Vec::new(),
        }
    }

    /// Total bytes released so far.
    pub fn released_len(&self) -> usize {
        self.released
    }

    pub fn push(&mut self, chunk: &str) -> StreamEvent<'_> {
        self.compact();
        self.buf.push_str(chunk);
        let pending = self.scan(false);
        let end = self.base + self.buf.len();
        let limit = end.saturating_sub(HOLD_BACK).min(pending.unwrap_or(usize::MAX));
        let to = self.char_floor(limit.max(self.released));
        let next_from = pending.unwrap_or(end).min(end.saturating_sub(OVERLAP));
        self.scan_from = next_from.max(self.base);
        self.release(to)
    }

    /// Ends the stream: decides every remaining candidate and releases the rest.
    pub fn finish(&mut self) -> StreamEvent<'_> {
        self.scan(true);
        let end = self.base + self.buf.len();
        self.scan_from = end;
        self.release(end)
    }

    /// Scans from `scan_from`, moves first-time findings to `fresh`, returns the earliest
    /// undecided candidate start.
    fn scan(&mut self, is_final: bool) -> Option<usize> {
        self.found.clear();
        let mut sink = Sink {
            out: &mut self.found,
            base: self.base,
            is_final,
            pending: None,
        };
        let from = self.scan_from - self.base;
        self.scanners.detect.scan(&self.buf, from, &mut sink);
        let pending = sink.pending.map(|p| p + self.base);
        self.fresh.clear();
        let scan_from = self.scan_from;
        self.reported.retain(|&(_, e, _)| e >= scan_from);
        for f in self.found.drain(..) {
            let key = (f.span.start, f.span.end, f.rule_id);
            if !self.reported.contains(&key) {
                self.reported.push(key);
                self.fresh.push(f);
            }
        }
        self.fresh.sort_by_key(|f| (f.span.start, f.span.end));
        pending
    }

    fn char_floor(&self, abs: usize) -> usize {
        let mut rel = abs.saturating_sub(self.base).min(self.buf.len());
        while rel > 0 && !self.buf.is_char_boundary(rel) {
            rel -= 1;
        }
        self.base + rel
    }

    fn release(&mut self, to: usize) -> StreamEvent<'_> {
        let from = self.released.max(to.min(self.released));
        let s = from - self.base;
        let e = to.max(from) - self.base;
        self.released = to.max(from);
        StreamEvent {
            findings: &self.fresh,
            released: self.buf.get(s..e).unwrap_or_default(),
        }
    }

    /// Drops text that is released and outside the context any future scan can look at.
    fn compact(&mut self) {
        let keep_from = self.released.min(self.scan_from).saturating_sub(CONTEXT);
        let drop = keep_from.saturating_sub(self.base);
        if drop > 4096 && self.buf.is_char_boundary(drop) {
            self.buf.drain(..drop);
            self.base += drop;
        }
    }
}
