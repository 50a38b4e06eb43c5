//! The engine against the example contract: one module per guard, plus the properties that
//! must hold whatever the request.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail loudly by design"
)]

mod budgets;
mod custom_rules;
mod fail_closed;
mod guards;
mod properties;
mod reasons_doc;
mod review_fixes;
mod scanning;
mod tokens;

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};

use gavel_contract::time::{Span, Timestamp};
use gavel_contract::Contract;
use gavel_engine::*;

/// 2026-11-22T12:00:00Z, a fixed "now" well before the example's deprecation dates.
pub const NOW: Timestamp = Timestamp(1_795_348_800_000);

/// The standard configuration, built once: compiling the scanners is the slow part of a test.
pub fn shared_config() -> EngineConfig {
    static CONFIG: std::sync::OnceLock<EngineConfig> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| EngineConfig::standard().unwrap())
        .clone()
}

pub struct World {
    pub contract: Arc<Contract>,
    pub engine: Engine,
    pub state: MemoryState,
    next_id: std::cell::Cell<u64>,
}

impl World {
    pub fn example() -> World {
        World::with_contract(gavel_contract::example::load().unwrap().contract)
    }

    /// The example contract with `edits` (from, to) applied to gavel.yaml.
    pub fn edited(edits: &[(&str, &str)]) -> World {
        let mut text = gavel_contract::example::FILES[0].1.to_string();
        for (from, to) in edits {
            assert!(text.contains(from), "the example has no `{from}`");
            text = text.replacen(from, to, 1);
        }
        let loaded = gavel_contract::load_bytes(
            Path::new("gavel.yaml"),
            text.as_bytes(),
            &gavel_contract::example::InMemory,
        )
        .unwrap();
        World::with_contract(loaded.contract)
    }

    pub fn with_contract(contract: Contract) -> World {
        let contract = Arc::new(contract);
        World {
            engine: Engine::new(contract.clone(), shared_config()),
            contract,
            state: MemoryState::new(),
            next_id: std::cell::Cell::new(0),
        }
    }

    /// An active approval of the deployment's current binding, valid for 30 days from NOW.
    pub fn approve(&self, deployment: &str) -> Approval {
        let approval = self.approval(deployment, ApprovalStatus::Active);
        self.state.put_approval(approval.clone()).unwrap();
        approval
    }

    pub fn approval(&self, deployment: &str, status: ApprovalStatus) -> Approval {
        let d = &self.contract.deployments[deployment];
        Approval {
            id: format!("apr_{deployment}_{}", self.fresh()),
            deployment: deployment.to_string(),
            use_case: d.use_case.clone(),
            binding: d.binding.0.clone(),
            contract_version: self.contract.version.0.clone(),
            tier: self.contract.use_case_of(d).unwrap().tier.as_str().into(),
            population: "test".into(),
            created_at: NOW,
            expires_at: NOW.saturating_add(Span::from_days(30)),
            thresholds: Default::default(),
            on_breach: OnBreach::Block,
            evidence: vec![],
            signoffs: vec![],
            status,
            revocation: None,
            activated_at: None,
        }
    }

    fn fresh(&self) -> u64 {
        let n = self.next_id.get() + 1;
        self.next_id.set(n);
        n
    }

    pub fn decide_at(&self, request: Value, principal: &str, now: Timestamp) -> Decision {
        let request = parse_request(request.to_string().as_bytes()).unwrap();
        self.engine.decide(
            &self.state,
            DecideInput {
                request: &request,
                principal,
                decision_id: format!("dec_{}", self.fresh()),
                now,
            },
        )
    }

    pub fn decide(&self, request: Value) -> Decision {
        self.decide_at(request, "svc", NOW)
    }
}

/// The exact text of an example prompt file.
pub fn prompt(name: &str) -> String {
    gavel_contract::example::FILES
        .iter()
        .find(|(p, _)| *p == format!("prompts/{name}.txt"))
        .map(|(_, c)| c.to_string())
        .unwrap()
}

/// A conforming request to the knowledge-search deployment.
pub fn kb_request() -> Value {
    json!({
        "deployment": "kb-search-v1",
        "messages": [
            {"role": "system", "content": prompt("kb")},
            {"role": "user", "content": "How do I book a meeting room?"}
        ]
    })
}

/// A conforming request to the triage deployment.
pub fn triage_request(deployment: &str) -> Value {
    json!({
        "deployment": deployment,
        "messages": [
            {"role": "system", "content": prompt("triage").replace("{{queue_list}}", "billing, delivery, damaged")},
            {"role": "user", "content": "My parcel arrived crushed."}
        ],
        "params": {"temperature": 0.2, "max_tokens": 200}
    })
}

pub fn codes(d: &Decision) -> Vec<&'static str> {
    d.reasons.iter().map(|r| r.code.as_str()).collect()
}

#[track_caller]
pub fn assert_verdict(d: &Decision, verdict: Verdict, first_code: &str) {
    assert_eq!(
        d.verdict,
        verdict,
        "{}",
        serde_json::to_string_pretty(d).unwrap()
    );
    assert_eq!(
        d.reasons.first().map(|r| r.code.as_str()),
        Some(first_code),
        "{}",
        serde_json::to_string_pretty(d).unwrap()
    );
}
