//! Arbitrary bytes as a contract: the loader must return a contract or located errors, never
//! panic, whatever the input (the example's prompt and schema files are available to it).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = gavel_contract::load_bytes(
        std::path::Path::new("gavel.yaml"),
        data,
        &gavel_contract::example::InMemory,
    );
});
