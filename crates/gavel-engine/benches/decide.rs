#![expect(
    clippy::panic,
    reason = "a bench that cannot build its contract has nothing to measure"
)]

//! Decision latency on the example contract with a ~1 KB prompt (SPEC section 11: p99 <= 20 us
//! for the full default pipeline, <= 30 us with a custom Rego rule).
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

/// Custom rules (`policy.rules`) in the contract measured.
#[derive(Clone, Copy)]
enum Rules {
    /// None: the pipeline as the SPEC's default.
    None,
    /// The example's one rule (refunds need a ticket), which looks at the deployment and stops.
    Example,
    /// Four rules over the principal, data classes, endpoint, tier, params, tools and time,
    /// each read in full: none of them denies a kb-search request.
    Four,
}

/// Four rules of the kinds a platform team writes, in one file.
const FOUR_RULES: &str = r#"package bench.facts

allowed_principals := {"svc-bench", "svc-kb", "svc-support"}

deny contains sprintf("principal %s may not call %s", [input.principal, input.deployment.id]) if {
	not input.principal in allowed_principals
}

deny contains "pii may not leave the EU" if {
	"pii" in input.data_classes
	input.target.endpoint.region != "eu"
}

deny contains "a minimal-tier use case asks for at most 1000 tokens" if {
	input.use_case.tier == "minimal"
	input.params.max_tokens > 1000
}

deny contains "no tools between 22:00 and 06:00 UTC" if {
	count(input.tools) > 0
	some hour in [22, 23, 0, 1, 2, 3, 4, 5]
	input.time.hour == hour
}
"#;

/// The example's files, with the four-rule file beside them.
struct BenchFiles;

impl gavel_contract::SourceFiles for BenchFiles {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        if path.ends_with("rules/bench.rego") {
            return Ok(FOUR_RULES.as_bytes().to_vec());
        }
        gavel_contract::example::InMemory.read(path)
    }
}

fn contract(rules: Rules) -> gavel_contract::Contract {
    const EXAMPLE_RULES: &str =
        "  rules:\n    - { id: refund-needs-ticket, file: rules/refund_ticket.rego }\n";
    let rules = match rules {
        Rules::None => "",
        Rules::Example => EXAMPLE_RULES,
        Rules::Four => "  rules:\n    - { id: bench, file: rules/bench.rego }\n",
    };
    let example = gavel_contract::example::FILES[0].1;
    if !example.contains(EXAMPLE_RULES) {
        panic!("the example's rules are no longer `{EXAMPLE_RULES}`");
    }
    let text = example
        .replace(EXAMPLE_RULES, rules)
        .replace(
            "window: 1m, tokens: 200000",
            "window: 1m, tokens: 2000000000",
        )
        .replace("window: 1d, usd: 300", "window: 1d, usd: 1000000")
        .replace(
            "window: 1m, requests: 120",
            "window: 1m, requests: 100000000",
        );
    gavel_contract::load_bytes(Path::new("gavel.yaml"), text.as_bytes(), &BenchFiles)
        .map(|l| l.contract)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// ~1 KB requests: the approved system prompt plus a user message built from real user
/// prompts (arena-hard, third-party), so the tokenizer sees varied text rather than one prompt
/// over and over. Falls back to one fixed question when the corpus is absent.
fn requests() -> Vec<DecideRequest> {
    let system = gavel_contract::example::FILES
        .iter()
        .find(|(p, _)| *p == "prompts/kb.txt")
        .map(|(_, c)| c.to_string())
        .unwrap_or_default();
    let corpus = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/corpora/benign/arena_hard_v0.1_questions.jsonl"
    );
    let prompts: Vec<String> = std::fs::read_to_string(corpus)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["prompt"].as_str().map(str::to_string))
        .collect();
    let prompts = if prompts.is_empty() {
        eprintln!("(corpus not found at {corpus}: using one fixed question)");
        vec!["How do I request production database access, who approves it and how long does it last?".to_string()]
    } else {
        prompts
    };
    let target = 1024 - system.len();
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < prompts.len().max(1) {
        let mut user = String::new();
        while user.len() < target {
            user.push_str(&prompts[i % prompts.len()]);
            user.push('\n');
            i += 1;
        }
        let cut = (0..=target)
            .rev()
            .find(|&n| user.is_char_boundary(n))
            .unwrap_or(0);
        user.truncate(cut);
        let body = json!({
            "deployment": "kb-search-v1",
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "params": {"max_tokens": 300}
        });
        out.push(parse_request(body.to_string().as_bytes()).unwrap_or_default());
    }
    out
}

/// Which pipeline to measure.
#[derive(Clone, Copy)]
enum Pipeline {
    /// `EngineConfig::standard()`: every guard, the scanners and the reservation.
    Full,
    /// Every guard and the reservation, without the content scanners.
    WithoutScanners,
}

fn setup_with(pipeline: Pipeline, rules: Rules) -> (Engine, MemoryState, Vec<DecideRequest>) {
    let contract = Arc::new(contract(rules));
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
        // The raised dollar budget puts the deployment past the example's spend tier.
        signoffs: vec![Signoff {
            principal: "bench".into(),
            approver_role: Some("budget_owner".into()),
            at: NOW,
        }],
        status: ApprovalStatus::Active,
        revocation: None,
        activated_at: None,
    };
    state.put_approval(approval).unwrap_or_default();
    let engine = Engine::new(
        contract,
        match pipeline {
            Pipeline::Full => EngineConfig::standard().unwrap_or_else(|e| panic!("{e}")),
            Pipeline::WithoutScanners => EngineConfig::default(),
        },
    );
    // The ALLOW path is measured: the few requests the scanners refuse at the example's
    // threshold (0.5; prompts glued together can read as a fake conversation turn) are left out.
    let all = requests();
    let before = all.len();
    let allowed: Vec<DecideRequest> = all
        .into_iter()
        .zip(1_000_000_000u64..)
        .filter(|(request, i)| {
            // A dry run: the verdict it would be, no strike against the bench's principal.
            let probe = DecideRequest {
                dry_run: true,
                ..request.clone()
            };
            let d = decide_once(&engine, &state, &probe, *i);
            d.would_be.is_some_and(|w| w.verdict == Verdict::Allow)
        })
        .map(|(request, _)| request)
        .collect();
    if allowed.len() < before {
        eprintln!(
            "({} of {before} requests refused by the scanners, left out)",
            before - allowed.len()
        );
    }
    (engine, state, allowed)
}

fn setup() -> (Engine, MemoryState, Vec<DecideRequest>) {
    setup_with(Pipeline::Full, Rules::None)
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

/// Per-decision latency over `n` decisions cycling through the requests. With `cold`, the
/// tokenizer's piece memo is emptied before each decision (untimed), which is the worst case:
/// every piece counted from scratch.
fn percentiles(pipeline: Pipeline, rules: Rules, cold: bool) {
    let (engine, state, requests) = setup_with(pipeline, rules);
    let bytes: usize = requests
        .iter()
        .map(|r| r.texts().map(|(_, t)| t.len()).sum::<usize>())
        .sum::<usize>()
        / requests.len().max(1);
    let usage = Usage {
        prompt_tokens: 200,
        completion_tokens: 100,
        tool_calls: 0,
    };
    let n = std::env::var("DECIDE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000u64);
    let mut samples = Vec::with_capacity(n as usize);
    let mut busy = Duration::ZERO;
    for i in 0..n + 2_000 {
        let request = &requests[i as usize % requests.len()];
        if cold {
            Encoding::clear_memo();
        }
        let start = Instant::now();
        let d = black_box(decide_once(&engine, &state, request, i));
        let took = start.elapsed();
        assert_eq!(d.verdict, Verdict::Allow, "{:?}", d.reasons);
        let _ = engine.settle(&state, &d.decision_id, "kb-search-v1", &usage, NOW);
        if i >= 2_000 {
            busy += took;
            samples.push(took.as_nanos() as u64);
        }
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize] as f64 / 1000.0;
    println!(
        "| {} | {} | {} | {} | {bytes} B | {:.1} us | {:.1} us | {:.1} us | {:.1} us | {:.0} |",
        match pipeline {
            Pipeline::Full => "full (guards + scanners + reservation)",
            Pipeline::WithoutScanners => "guards + reservation, no scanners",
        },
        match rules {
            Rules::None => "none",
            Rules::Example => "the example's (refund-needs-ticket)",
            Rules::Four => "four rules over the request's facts",
        },
        if cold {
            "cold (memo cleared each time)"
        } else {
            "warm"
        },
        requests.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        at(0.999),
        n as f64 / busy.as_secs_f64()
    );
}

fn main() {
    let mut criterion = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(5));
    let (engine, state, requests) = setup();
    let mut i = 0u64;
    criterion.bench_function("decide/kb-search-v1/1KB/allow", |b| {
        b.iter(|| {
            i += 1;
            let d = decide_once(&engine, &state, &requests[i as usize % requests.len()], i);
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
    criterion.bench_function("tokenize/o200k/1KB/warm", |b| {
        b.iter(|| {
            i += 1;
            let texts: Vec<_> = requests[i as usize % requests.len()]
                .texts()
                .map(|(_, t)| t)
                .collect();
            Encoding::O200k.count_chat(texts.iter().map(|t| t.as_ref()))
        })
    });
    let system = requests[0]
        .system_prompts()
        .first()
        .map(|s| s.to_string())
        .unwrap_or_default();
    criterion.bench_function("template_check/kb", |b| {
        let template = engine.contract().deployments["kb-search-v1"]
            .prompt_template
            .clone();
        b.iter(|| template.as_ref().map(|t| t.check(black_box(&system))))
    });
    criterion.final_summary();
    println!("\ndecision latency, example contract, kb-search-v1 ALLOW path (every guard and the budget reservation), one thread:");
    println!("| pipeline | custom rules (Rego) | tokenizer memo | distinct prompts | mean prompt | p50 | p90 | p99 | p99.9 | decisions/s (one core) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    // DECIDE_MEMO=warm or cold runs one of the two (e.g. under callgrind); default both.
    let memo = std::env::var("DECIDE_MEMO").unwrap_or_default();
    for (pipeline, rules) in [
        (Pipeline::Full, Rules::None),
        (Pipeline::Full, Rules::Example),
        (Pipeline::Full, Rules::Four),
        (Pipeline::WithoutScanners, Rules::None),
    ] {
        if memo != "cold" {
            percentiles(pipeline, rules, false);
        }
        if memo != "warm" {
            percentiles(pipeline, rules, true);
        }
    }
}
