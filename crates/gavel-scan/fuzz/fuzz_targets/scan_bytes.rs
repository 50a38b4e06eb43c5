//! Arbitrary bytes through every entry point: nothing may panic, spans must lie inside the
//! input, streaming the valid prefix in fuzzer-chosen chunks must report the whole-text
//! findings, and with injection scoring no byte of injection evidence may be released before
//! the evidence is reported.
//!
//! `cargo +nightly fuzz run scan_bytes` (from crates/gavel-scan/fuzz).
#![no_main]

use std::sync::Arc;

use gavel_scan::{
    ContentRole, FindingKind, Redactor, ScanConfig, Scanners, StreamInjection, StreamScanner,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static SCANNERS: Arc<Scanners> = Arc::new(Scanners::new(&ScanConfig::default()).unwrap());
    }
    SCANNERS.with(|s| {
        let mut out = Vec::new();
        for role in [
            ContentRole::User,
            ContentRole::Retrieved,
            ContentRole::Output,
        ] {
            out.clear();
            let o = s.scan_bytes(data, role, &mut out);
            assert!((0.0..=1.0).contains(&o.injection_score));
            for f in &out {
                assert!(f.span.start <= f.span.end && f.span.end <= data.len());
            }
        }
        let text = match std::str::from_utf8(data) {
            Ok(t) => t,
            Err(e) => std::str::from_utf8(&data[..e.valid_up_to()]).unwrap(),
        };
        out.clear();
        s.scan(text, ContentRole::Output, &mut out);
        let _ = Redactor::new().redact(text, &out);
        let mut whole: Vec<_> = out.iter().map(|f| (f.span.clone(), f.rule_id)).collect();
        whole.sort_by_key(|(r, id)| (r.start, r.end, *id));
        // Chunk sizes come from the first byte.
        let step = usize::from(data.first().copied().unwrap_or(7) % 61) + 1;
        let mut st = StreamScanner::new(s.clone());
        let mut streamed = Vec::new();
        let mut i = 0;
        while i < text.len() {
            let mut j = (i + step).min(text.len());
            while !text.is_char_boundary(j) {
                j += 1;
            }
            streamed.extend(
                st.push(&text[i..j])
                    .findings
                    .iter()
                    .map(|f| (f.span.clone(), f.rule_id)),
            );
            i = j;
        }
        streamed.extend(
            st.finish()
                .findings
                .iter()
                .map(|f| (f.span.clone(), f.rule_id)),
        );
        streamed.sort_by_key(|(r, id)| (r.start, r.end, *id));
        assert_eq!(whole, streamed);

        // The same chunks with injection scoring, window and step from the second byte.
        let b = usize::from(data.get(1).copied().unwrap_or(0));
        let config = StreamInjection {
            window: 64 + 2 * b,
            step: 1 + b / 2,
            ..StreamInjection::default()
        };
        let mut st = StreamScanner::with_injection(s.clone(), config);
        let mut released = 0;
        let mut i = 0;
        let check = |findings: &[gavel_scan::Finding], released: usize| {
            for f in findings.iter().filter(|f| f.kind == FindingKind::Injection) {
                assert!(released <= f.span.start && f.span.end <= text.len());
                assert!(text.is_char_boundary(f.span.start) && text.is_char_boundary(f.span.end));
            }
        };
        while i < text.len() {
            let mut j = (i + step).min(text.len());
            while !text.is_char_boundary(j) {
                j += 1;
            }
            let ev = st.push(&text[i..j]);
            check(ev.findings, released);
            released += ev.released.len();
            i = j;
        }
        let ev = st.finish();
        check(ev.findings, released);
        assert_eq!(released + ev.released.len(), text.len());
    });
});
