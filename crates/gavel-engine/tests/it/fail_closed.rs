//! Fail closed: when the state cannot answer, the verdict is BLOCK `governance.unavailable`.

use gavel_contract::time::Timestamp;
use gavel_engine::*;

use crate::*;

/// The example state with one method broken.
struct Broken {
    inner: MemoryState,
    fails: &'static str,
}

impl Broken {
    fn check(&self, method: &str) -> Result<(), StateError> {
        if self.fails == method {
            Err(StateError(format!("{method} is down")))
        } else {
            Ok(())
        }
    }
}

impl RuntimeState for Broken {
    fn view(
        &self,
        d: &str,
        u: &str,
        p: &str,
        r: Option<&str>,
        now: Timestamp,
    ) -> Result<GovernanceView, StateError> {
        self.check("view")?;
        self.inner.view(d, u, p, r, now)
    }
    fn approvals_of(&self, d: &str) -> Result<Vec<Approval>, StateError> {
        self.check("approvals_of")?;
        self.inner.approvals_of(d)
    }
    fn claim_idempotency(
        &self,
        k: &str,
        d: &str,
        now: Timestamp,
        e: Timestamp,
    ) -> Result<Option<String>, StateError> {
        self.check("claim_idempotency")?;
        self.inner.claim_idempotency(k, d, now, e)
    }
    fn release_idempotency(&self, k: &str, d: &str) -> Result<(), StateError> {
        self.check("release_idempotency")?;
        self.inner.release_idempotency(k, d)
    }
    fn reserve(
        &self,
        r: &ReservationRequest,
        now: Timestamp,
        dry: bool,
    ) -> Result<Result<(), Refusal>, StateError> {
        self.check("reserve")?;
        self.inner.reserve(r, now, dry)
    }
    fn settle(&self, id: &str, a: Amounts, now: Timestamp) -> Result<Settled, StateError> {
        self.check("settle")?;
        self.inner.settle(id, a, now)
    }
    fn add_strike(&self, p: &str, now: Timestamp, w: u64) -> Result<u32, StateError> {
        self.check("add_strike")?;
        self.inner.add_strike(p, now, w)
    }
    fn start_cooldown(&self, c: &Cooldown) -> Result<(), StateError> {
        self.check("start_cooldown")?;
        self.inner.start_cooldown(c)
    }
}

#[test]
fn every_state_failure_on_the_decision_path_blocks() {
    let w = World::edited(&[(
        "    data_classes: [internal]\n  credit-limit:",
        "    data_classes: [internal, pii]\n  credit-limit:",
    )]);
    for fails in ["view", "claim_idempotency", "reserve", "approvals_of"] {
        let state = Broken {
            inner: MemoryState::new(),
            fails,
        };
        state
            .inner
            .put_approval(w.approval("support-triage-v3", ApprovalStatus::Active))
            .unwrap();
        state
            .inner
            .put_approval(w.approval("support-triage-local", ApprovalStatus::Active))
            .unwrap();
        let mut r = triage_request("support-triage-v3");
        r["idempotency_key"] = serde_json::json!("k");
        let request = parse_request(r.to_string().as_bytes()).unwrap();
        let d = w.engine.decide(
            &state,
            DecideInput {
                request: &request,
                principal: "svc",
                decision_id: "dec_x".into(),
                now: NOW,
            },
        );
        assert_eq!(d.verdict, Verdict::Block, "{fails}: {d:?}");
        assert_eq!(
            d.reasons[0].code.as_str(),
            "governance.unavailable",
            "{fails}"
        );
        assert!(d.reasons[0].message.contains("is down"));
    }
}

#[test]
fn a_failing_strike_counter_still_blocks_and_says_so() {
    let w = World::example();
    let state = Broken {
        inner: MemoryState::new(),
        fails: "add_strike",
    };
    state
        .inner
        .put_approval(w.approval("order-agent-v2", ApprovalStatus::Active))
        .unwrap();
    let r = serde_json::json!({"deployment": "order-agent-v2", "run_id": "r1", "step": "lookup", "action": {"type": "tool_call", "name": "nope"}});
    let request = parse_request(r.to_string().as_bytes()).unwrap();
    let d = w.engine.decide(
        &state,
        DecideInput {
            request: &request,
            principal: "svc",
            decision_id: "dec_x".into(),
            now: NOW,
        },
    );
    assert_eq!(d.verdict, Verdict::Block);
    assert!(codes(&d).contains(&"governance.unavailable"));
}
