#![expect(
    clippy::panic,
    reason = "a bench that cannot build its contract has nothing to measure"
)]

//! Decision latency on the example contract with a ~1 KB prompt (SPEC section 11: p99 <= 20 us
//! for the full default pipeline).
//!
//! `cargo bench -p gavel-engine --bench decide` prints criterion's estimates and then a table of
//! per-decision percentiles and single-core throughput measured over many decisions. Budgets
//! are raised so that every decision takes the full ALLOW path (reserve included) instead of
//! stopping early at a refusal; each decision is settled (untimed) so state stays bounded.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{black_box, Criterion};
use serde_json::json;

use gavel_contract::time::{Span, Timestamp};
use gavel_engine::*;

const NOW: Timestamp = Timestamp(1_795_348_800_000);

fn contract() -> gavel_contract::Contract {
    let text = gavel_contract::example::FILES[0]
        .1
        .replace(
            "window: 1m, tokens: 200000",
            "window: 1m, tokens: 2000000000",
        )
        .replace("window: 1d, usd: 300", "window: 1d, usd: 1000000")
        .replace(
            "window: 1m, requests: 120",
            "window: 1m, requests: 100000000",
        );
    gavel_contract::load_bytes(
        Path::new("gavel.yaml"),
        text.as_bytes(),
        &gavel_contract::example::InMemory,
    )
    .map(|l| l.contract)
    .unwrap_or_else(|e| panic!("{e}"))
}

fn request() -> DecideRequest {
    let system = gavel_contract::example::FILES
        .iter()
        .find(|(p, _)| *p == "prompts/kb.txt")
        .map(|(_, c)| c.to_string())
        .unwrap_or_default();
    let question = "I am new to the platform team and need to understand how our internal wiki describes the \
        process for requesting production database access, including who approves it, how long approvals last, \
        whether break-glass access exists for incidents, what audit trail is kept when someone uses it, and how \
        that differs between the EU and US regions. Please also tell me which runbook pages I should read first, \
        who owns them, and whether the on-call rotation has its own access policy that supersedes the general one. \
        Finally, summarise any recent changes to the policy that were announced in the engineering newsletter or \
        in the platform channel over the last quarter, and cite the page titles you used for each part.";
    let body = json!({
        "deployment": "kb-search-v1",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        "params": {"max_tokens": 300},
        "run_id": "bench-run"
    });
    parse_request(body.to_string().as_bytes()).unwrap_or_default()
}

fn setup() -> (Engine, MemoryState, DecideRequest) {
    let contract = Arc::new(contract());
    let state = MemoryState::new();
    let d = &contract.deployments["kb-search-v1"];
    let approval = Approval {
        id: "apr_bench".into(),
        deployment: d.id.clone(),
        use_case: d.use_case.clone(),
        binding: d.binding.0.clone(),
        contract_version: contract.version.0.clone(),
        tier: "minimal".into(),
        population: "bench".into(),
        created_at: NOW,
        expires_at: NOW.saturating_add(Span::from_days(300)),
        thresholds: Default::default(),
        on_breach: OnBreach::Block,
        evidence: vec![],
        signoffs: vec![],
        status: ApprovalStatus::Active,
        revocation: None,
    };
    state.put_approval(approval).unwrap_or_default();
    (
        Engine::new(contract, EngineConfig::default()),
        state,
        request(),
    )
}

fn decide_once(engine: &Engine, state: &MemoryState, request: &DecideRequest, i: u64) -> Decision {
    engine.decide(
        state,
        DecideInput {
            request,
            principal: "svc-bench",
            decision_id: format!("dec_{i}"),
            now: Timestamp(NOW.millis() + i as i64 / 100),
        },
    )
}

fn percentiles() {
    let (engine, state, request) = setup();
    let text_bytes: usize = request.texts().map(|(_, t)| t.len()).sum();
    let usage = Usage {
        prompt_tokens: 200,
        completion_tokens: 100,
        tool_calls: 0,
    };
    for i in 0..2_000 {
        let d = decide_once(&engine, &state, &request, i);
        let _ = engine.settle(&state, &d.decision_id, "kb-search-v1", &usage, NOW);
    }
    let n = 200_000u64;
    let mut samples = Vec::with_capacity(n as usize);
    let mut busy = Duration::ZERO;
    for i in 0..n {
        let start = Instant::now();
        let d = black_box(decide_once(&engine, &state, &request, 2_000 + i));
        let took = start.elapsed();
        busy += took;
        samples.push(took.as_nanos() as u64);
        assert_eq!(d.verdict, Verdict::Allow, "{:?}", d.reasons);
        let _ = engine.settle(&state, &d.decision_id, "kb-search-v1", &usage, NOW);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize] as f64 / 1000.0;
    println!("\ndecision latency, example contract, kb-search-v1 ALLOW path, {text_bytes}-byte prompt, {n} decisions, one thread:");
    println!("| p50 | p90 | p99 | p99.9 | max | decisions/s (one core) |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {:.1} us | {:.1} us | {:.1} us | {:.1} us | {:.1} us | {:.0} |",
        at(0.50),
        at(0.90),
        at(0.99),
        at(0.999),
        at(1.0),
        n as f64 / busy.as_secs_f64()
    );
}

fn main() {
    let mut criterion = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(5));
    let (engine, state, request) = setup();
    let mut i = 0u64;
    criterion.bench_function("decide/kb-search-v1/1KB/allow", |b| {
        b.iter(|| {
            i += 1;
            let d = decide_once(&engine, &state, &request, i);
            let _ = engine.settle(
                &state,
                &d.decision_id,
                "kb-search-v1",
                &Usage::default(),
                NOW,
            );
            d
        })
    });
    let system = request
        .system_prompts()
        .first()
        .map(|s| s.to_string())
        .unwrap_or_default();
    criterion.bench_function("tokenize/o200k/1KB", |b| {
        b.iter(|| {
            Encoding::O200k.count_chat(
                request
                    .texts()
                    .map(|(_, t)| t)
                    .collect::<Vec<_>>()
                    .iter()
                    .map(|t| t.as_ref()),
            )
        })
    });
    criterion.bench_function("template_check/kb", |b| {
        let template = engine.contract().deployments["kb-search-v1"]
            .prompt_template
            .clone();
        b.iter(|| template.as_ref().map(|t| t.check(black_box(&system))))
    });
    criterion.final_summary();
    percentiles();
}
