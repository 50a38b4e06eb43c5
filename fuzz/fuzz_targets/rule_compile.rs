//! Arbitrary bytes as a custom rule file: compiling must give a program or a located error,
//! and evaluating a program must give messages or an error, never a panic or a hang (run with
//! `-timeout=5`: regorus's parser once took minutes on nested brackets).
#![no_main]

use gavel_rules::{Doc, RuleProgram};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // gavel-rules turns regorus's panics into errors (catch_unwind); libfuzzer-sys's panic
    // hook would abort on those too. A panic that escapes still aborts: libfuzzer-sys runs
    // each input under catch_unwind and aborts on one.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rule) = RuleProgram::compile("rules/fuzz.rego", text) {
        let input = Doc::default()
            .with("principal", "svc-fuzz")
            .with("params", Doc::default().with("max_tokens", 512u64));
        let _ = rule.evaluate(&input.into());
    }
});
