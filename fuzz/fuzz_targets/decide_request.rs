//! Arbitrary bytes as a decide request: parse it, and if it parses, decide it against the
//! example contract with every deployment approved, so that conformance, scanning,
//! sovereignty and budgets are reached too. Nothing may panic, and an unknown deployment or a
//! prohibited tier is never allowed.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;

use gavel_contract::time::{Span, Timestamp};
use gavel_engine::{
    parse_request, Approval, ApprovalStatus, DecideInput, Engine, EngineConfig, MemoryState, OnBreach, Verdict,
};

const NOW: Timestamp = Timestamp(1_795_348_800_000);

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let contract = gavel_contract::example::load().map(|l| l.contract).ok();
        let config = EngineConfig::standard().unwrap_or_else(|_| std::process::abort());
        Engine::new(Arc::new(contract.unwrap_or_else(|| std::process::abort())), config)
    })
}

fn approved_state(engine: &Engine) -> MemoryState {
    let state = MemoryState::new();
    for d in engine.contract().deployments.values() {
        let approval = Approval {
            id: format!("apr_{}", d.id),
            deployment: d.id.clone(),
            use_case: d.use_case.clone(),
            binding: d.binding.0.clone(),
            contract_version: engine.contract().version.0.clone(),
            tier: "minimal".into(),
            population: "fuzz".into(),
            created_at: NOW,
            expires_at: NOW.saturating_add(Span::from_days(30)),
            thresholds: Default::default(),
            on_breach: OnBreach::Block,
            evidence: vec![],
            signoffs: vec![],
            status: ApprovalStatus::Active,
            revocation: None,
        };
        let _ = state.put_approval(approval);
    }
    state
}

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = parse_request(data) {
        let engine = engine();
        let state = approved_state(engine);
        let d = engine.decide(
            &state,
            DecideInput { request: &request, principal: "fuzz", decision_id: "dec_fuzz".into(), now: NOW },
        );
        let known = engine.contract().deployment(&request.deployment);
        if d.verdict == Verdict::Allow {
            assert!(known.is_some(), "ALLOW for an unknown deployment");
            assert_ne!(d.deployment, "tenant-score-v0", "ALLOW for a prohibited use case");
        }
    }
});
