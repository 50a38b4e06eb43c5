//! Property: no request without a valid approval for its exact binding is ever ALLOW, whatever
//! approvals exist and whatever the request says.

use proptest::prelude::*;
use serde_json::{json, Value};

use gavel_contract::time::{Span, Timestamp};
use gavel_engine::*;

use crate::*;

const DEPLOYMENTS: [&str; 6] = [
    "kb-search-v1",
    "support-triage-v3",
    "support-triage-local",
    "order-agent-v2",
    "credit-limit-v1",
    "tenant-score-v0",
];

#[derive(Debug, Clone)]
struct ApprovalSpec {
    deployment: usize,
    current_binding: bool,
    right_use_case: bool,
    status: u8,
    expires_in_hours: i64,
}

fn approval_spec() -> impl Strategy<Value = ApprovalSpec> {
    (
        0..DEPLOYMENTS.len(),
        any::<bool>(),
        prop::bool::weighted(0.8),
        0u8..3,
        -48i64..48,
    )
        .prop_map(
            |(deployment, current_binding, right_use_case, status, expires_in_hours)| {
                ApprovalSpec {
                    deployment,
                    current_binding,
                    right_use_case,
                    status,
                    expires_in_hours,
                }
            },
        )
}

fn request(kind: u8, deployment: &str) -> Value {
    match kind {
        0 => kb_request(),
        1 => triage_request(deployment),
        2 => {
            json!({"deployment": deployment, "step": "lookup", "action": {"type": "tool_call", "name": "lookup_order", "args": {"order_id": "A00012345"}}})
        }
        3 => json!({"deployment": deployment}),
        _ => {
            let mut r = kb_request();
            r["deployment"] = json!(deployment);
            r["idempotency_key"] = json!("same");
            r
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn allow_implies_a_live_approval_of_the_exact_binding(
        approvals in prop::collection::vec(approval_spec(), 0..6),
        target in 0..DEPLOYMENTS.len(),
        kind in 0u8..5,
        later_hours in 0i64..24,
    ) {
        let w = World::example();
        for spec in &approvals {
            let deployment = DEPLOYMENTS[spec.deployment];
            let status = [ApprovalStatus::Pending, ApprovalStatus::Active, ApprovalStatus::Revoked][usize::from(spec.status)];
            let mut a = w.approval(deployment, status);
            if !spec.current_binding {
                a.binding = format!("{:064x}", spec.deployment + 1);
            }
            if !spec.right_use_case {
                a.use_case = "someone-elses".into();
            }
            a.expires_at = Timestamp(NOW.millis() + spec.expires_in_hours * 3_600_000);
            w.state.put_approval(a).unwrap();
        }
        let deployment = DEPLOYMENTS[target];
        let now = NOW.saturating_add(Span::from_secs(later_hours as u64 * 3600));
        let d = w.decide_at(request(kind, deployment), "svc", now);
        if d.verdict == Verdict::Allow {
            let binding = &w.contract.deployments[&d.deployment].binding.0;
            let use_case = &w.contract.deployments[&d.deployment].use_case;
            let all = w.state.approvals_of(&d.deployment).unwrap();
            let approval = all.iter().find(|a| Some(&a.id) == d.approval_id.as_ref());
            prop_assert!(approval.is_some(), "ALLOW without an approval id: {d:?}");
            let a = approval.unwrap();
            prop_assert_eq!(&a.binding, binding);
            prop_assert_eq!(&a.use_case, use_case);
            prop_assert_eq!(a.status, ApprovalStatus::Active);
            prop_assert!(now < a.expires_at);
            prop_assert!(d.deployment != "tenant-score-v0");
        }
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
        prop::sample::select(vec![
            "kb-search-v1",
            "order-agent-v2",
            "system",
            "user",
            "tool_call",
            "inference",
            "lookup_order"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "deployment",
                    "messages",
                    "content",
                    "role",
                    "text",
                    "params",
                    "tools",
                    "function",
                    "name",
                    "parameters",
                    "action",
                    "type",
                    "args",
                    "step",
                    "run_id",
                    "idempotency_key",
                    "dry_run",
                    "resources",
                    "model",
                    "max_tokens",
                    "temperature",
                    "principal",
                ])
                .prop_map(str::to_string),
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    /// Arbitrary request-shaped JSON: parsing never panics, deciding never panics, and with no
    /// approvals in the state nothing is ever allowed.
    #[test]
    fn arbitrary_requests_never_panic_and_never_allow_unapproved(mut body in json_value(), deployment in 0..DEPLOYMENTS.len()) {
        if let Value::Object(map) = &mut body {
            map.insert("deployment".into(), json!(DEPLOYMENTS[deployment]));
        }
        let w = World::example();
        if let Ok(request) = parse_request(body.to_string().as_bytes()) {
            let d = w.engine.decide(&w.state, DecideInput { request: &request, principal: "svc", decision_id: "dec_p".into(), now: NOW });
            prop_assert!(d.verdict != Verdict::Allow, "{:?}", d);
        }
    }
}
