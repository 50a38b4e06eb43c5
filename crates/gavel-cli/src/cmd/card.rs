//! `gavel card DEPLOYMENT`: a model card written from what governs and what happened, not from
//! what someone remembered to write down: the deployment as approved (model, prompt, tools,
//! parameters, each file by its SHA-256), its intended use and risk tier, who approved it under
//! which thresholds and evidence, its live signals against those thresholds, its incidents, and
//! where the ledger proves it. Markdown, or JSON with `--json`.

use std::fmt::Write as _;

use serde_json::json;

use gavel_contract::{short_hash, Contract, ParamRule};
use gavel_ledger_sqlite::SqliteLedgerSink;
use gavel_monitor::{Bound, CheckState};
use gavel_store::Store;

use super::explain::{gather, signer, Explanation};
use super::status::READERS;
use crate::context::out;
use crate::context::{print_json, Context};
use crate::failure::{Failure, Outcome};
use crate::ledger::LedgerState;

pub fn run(ctx: &Context, deployment_id: &str, as_json: bool) -> Outcome {
    let store = ctx.store()?;
    ctx.authenticate(&store, READERS, "writing a model card")?;
    let contract = ctx.contract_in_force(&store)?;
    let sink = crate::ledger::open_sink(&ctx.db_path)?;
    let explanation = gather(&contract, &store, &sink, deployment_id)?;
    let ledger = LedgerState::of(&sink)?;
    if as_json {
        return print_json(&json!({
            "deployment": explanation.d,
            "endpoint": contract.endpoints.get(&explanation.d.endpoint),
            "contract_version": contract.version.0,
            "generated_at": explanation.at,
            "explain": explanation.json(),
            "ledger": { "records": ledger.records, "newest_checkpoint": ledger.newest_checkpoint.map(|(seq, size)| json!({ "seq": seq, "size": size })) },
        }));
    }
    out!("{}", markdown(&contract, &explanation, &ledger));
    Ok(())
}

/// The model card of `deployment_id`, as Markdown.
pub fn card(
    contract: &Contract,
    store: &dyn Store,
    sink: &SqliteLedgerSink,
    deployment_id: &str,
) -> Result<String, Failure> {
    let explanation = gather(contract, store, sink, deployment_id)?;
    Ok(markdown(contract, &explanation, &LedgerState::of(sink)?))
}

/// `400` for a whole number however YAML read it (`400.0`), the value as JSON otherwise.
fn number_or_value(value: &serde_json::Value) -> String {
    match value.as_f64() {
        Some(n) if n.fract() == 0.0 && n.abs() < 1e15 => format!("{}", n as i64),
        _ => value.to_string(),
    }
}

fn markdown(contract: &Contract, e: &Explanation<'_>, ledger: &LedgerState) -> String {
    let d = e.d;
    let u = e.use_case;
    let mut md = String::new();
    // Writing to a String cannot fail.
    macro_rules! line {
        ($($arg:tt)*) => {{
            let _ = writeln!(md, $($arg)*);
        }};
    }
    line!("# Model card: {}", d.id);
    line!();
    line!(
        "Written by gavel at {} from the contract in force (version {}), the approvals and the ledger. Every figure below is read, not typed.",
        e.at,
        short_hash(&contract.version.0)
    );
    line!();
    line!("## What is deployed");
    line!();
    line!("| | |");
    line!("|---|---|");
    line!(
        "| model | {} (snapshot `{}`){} |",
        d.model.name,
        d.model.snapshot,
        d.model
            .deprecates
            .map(|date| format!(", deprecated from {date}"))
            .unwrap_or_default()
    );
    if let Some(endpoint) = contract.endpoints.get(&d.endpoint) {
        line!(
            "| endpoint | `{}`: {}, region {} |",
            endpoint.id,
            serde_json::to_value(endpoint.location)
                .ok()
                .and_then(|l| l.as_str().map(str::to_string))
                .unwrap_or_default(),
            endpoint.region
        );
    }
    line!("| binding | `{}` |", d.binding.0);
    if let Some(t) = &d.prompt_template {
        line!(
            "| prompt template | `{}` (sha256 `{}`){} |",
            t.file.path.display(),
            short_hash(&t.file.sha256),
            if t.variables.is_empty() {
                String::new()
            } else {
                format!(", variables {}", t.variables.join(", "))
            }
        );
    }
    for (name, tool) in &d.tools {
        line!(
            "| tool `{name}` | schema `{}` (sha256 `{}`) |",
            tool.file.path.display(),
            short_hash(&tool.file.sha256)
        );
    }
    if !d.params.is_empty() {
        let params: Vec<String> = d
            .params
            .iter()
            .map(|(name, rule)| match rule {
                ParamRule::Exactly(value) => format!("{name} {}", number_or_value(value)),
                ParamRule::Range { min, max } => format!("{name} in [{min}, {max}]"),
            })
            .collect();
        line!("| parameters | {} |", params.join("; "));
    }
    if let Some(r) = &d.retrieval {
        line!(
            "| retrieval | index `{}`{}{} |",
            r.index,
            r.top_k.map(|k| format!(", top {k}")).unwrap_or_default(),
            r.embedding_model
                .as_ref()
                .map(|m| format!(", embeddings {m}"))
                .unwrap_or_default()
        );
    }
    if let Some(eval) = &d.eval_set {
        line!(
            "| eval set | `{}` (sha256 `{}`) |",
            eval.path.display(),
            short_hash(&eval.sha256)
        );
    }
    if let Some(fallback) = &d.fallback {
        line!(
            "| fallback | {} |",
            serde_json::to_string(fallback).unwrap_or_default()
        );
    }
    line!();
    line!("## Intended use");
    line!();
    line!(
        "Use case `{}` ({}), domain {}, risk tier **{}**. Population: {}. Data classes: {}. Owner {}; on-call {}{}.",
        u.id,
        u.description.as_deref().unwrap_or("no description"),
        u.domain,
        u.tier,
        u.population,
        if u.data_classes.is_empty() {
            "none declared".to_string()
        } else {
            u.data_classes.join(", ")
        },
        u.owner,
        u.oncall.webhook_shown(),
        u.oncall
            .runbook
            .as_ref()
            .map(|r| format!(", runbook {r}"))
            .unwrap_or_default()
    );
    line!();
    line!("## Approval");
    line!();
    match &e.covering {
        Ok(a) => {
            line!(
                "Approval `{}` ({}), for {}, valid from {} until {}, under contract version {}.",
                a.id,
                a.state_at(e.at),
                a.population,
                a.created_at,
                a.expires_at,
                short_hash(&a.contract_version)
            );
            for s in &a.signoffs {
                line!("- signed by {}", signer(s));
            }
            for evidence in &a.evidence {
                line!(
                    "- evidence {}: `{}` (sha256 `{}`)",
                    evidence.kind,
                    evidence.path,
                    short_hash(&evidence.sha256)
                );
            }
            line!(
                "- on breach: {}",
                serde_json::to_string(&a.on_breach).unwrap_or_default()
            );
            if let Some(why) = &e.why_not {
                line!("- **Every request to it is refused**: {why}.");
            }
        }
        Err(_) => line!(
            "**Not approved**: {}. Every request to it is refused.",
            e.why_not.as_deref().unwrap_or("no approval covers it")
        ),
    }
    if let Some(r) = &e.registration {
        line!("- this binding was applied by {} at {}", r.changed_by, r.at);
    }
    line!();
    line!(
        "## Performance against the approved thresholds (over the last {})",
        contract.policy.monitoring.window
    );
    line!();
    let s = &e.performance.signals;
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2}%", v * 100.0));
    line!(
        "State **{}**. {} decisions, {} executions; latency p50 / p99 {}; errors {}; abuse {}; fallback {}; accuracy {}; spend ${:.4}.",
        e.performance.state,
        s.decisions,
        s.executions,
        s.latency_ms
            .as_ref()
            .map_or("-".to_string(), |l| format!("{:.0} / {:.0} ms", l.p50, l.p99)),
        pct(s.error_rate),
        pct(s.abuse_rate),
        pct(s.fallback_rate),
        s.accuracy
            .map_or("-".to_string(), |a| format!("{a:.3} (n={})", s.accuracy_samples)),
        s.spend_usd
    );
    if e.performance.checks.is_empty() {
        line!();
        line!("No thresholds were approved.");
    } else {
        line!();
        line!("| threshold | value | limit | state |");
        line!("|---|---|---|---|");
        for c in &e.performance.checks {
            line!(
                "| {} | {} | {} {} | {} |",
                c.threshold,
                c.value.map_or("-".to_string(), |v| format!("{v:.4}")),
                match c.bound {
                    Bound::Max => "≤",
                    Bound::Min => "≥",
                },
                c.limit,
                match c.state {
                    CheckState::Within => format!("within (n={})", c.samples),
                    CheckState::Breached => format!("**BREACHED** (n={})", c.samples),
                    CheckState::Insufficient => format!("too few observations ({})", c.samples),
                }
            );
        }
    }
    line!();
    line!("## Incidents");
    line!();
    if e.breaches.is_empty() && e.kills.is_empty() && e.cooldowns.is_empty() {
        line!("No breach recorded; no kill switch or cooldown in force.");
    }
    for b in &e.breaches {
        line!(
            "- breach `{}` at {}: {} {} against {}",
            b["breach_id"].as_str().unwrap_or_default(),
            b["since"].as_str().unwrap_or_default(),
            b["threshold"].as_str().unwrap_or_default(),
            b["value"],
            b["limit"]
        );
    }
    for k in &e.kills {
        line!(
            "- killed (`{}`) by {} at {}: {}",
            k.scope.key(),
            k.by,
            k.at,
            k.reason
        );
    }
    for c in &e.cooldowns {
        line!(
            "- cooling down (`{}`) until {}: {}",
            c.scope.key(),
            c.until,
            c.reason
        );
    }
    line!();
    line!("## Proof");
    line!();
    line!(
        "The ledger holds {} records; {}. `gavel audit verify` re-derives all of it; `gavel audit prove ID` proves any decision below to anyone with the public key (`gavel audit pubkey`).",
        ledger.records,
        match ledger.newest_checkpoint {
            Some((seq, size)) => format!("the newest signed checkpoint, #{seq}, covers {size}"),
            None => "no checkpoint is signed yet".to_string(),
        }
    );
    for decision in &e.latest {
        line!(
            "- {} {} at {}, leaf {}",
            decision["decision_id"].as_str().unwrap_or_default(),
            decision["verdict"].as_str().unwrap_or_default(),
            decision["at"].as_str().unwrap_or_default(),
            decision["index"]
        );
    }
    md.truncate(md.trim_end().len());
    md
}
