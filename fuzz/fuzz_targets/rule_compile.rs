//! Arbitrary bytes as a custom rule file: compiling must give a program or a located error,
//! and evaluating a program must give messages or an error, never a panic.
#![no_main]

use gavel_rules::{Doc, RuleProgram};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
