//! Arbitrary bytes as a decide request: parse it, and if it parses, decide it against the
//! example contract with one approved deployment. Nothing may panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;

use gavel_contract::time::Timestamp;
use gavel_engine::{parse_request, DecideInput, Engine, EngineConfig, MemoryState};

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let contract = gavel_contract::example::load().map(|l| l.contract).ok();
        Engine::new(Arc::new(contract.unwrap_or_else(|| std::process::abort())), EngineConfig::default())
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = parse_request(data) {
        let state = MemoryState::new();
        let _ = engine().decide(
            &state,
            DecideInput { request: &request, principal: "fuzz", decision_id: "dec_fuzz".into(), now: Timestamp(1_795_348_800_000) },
        );
    }
});
