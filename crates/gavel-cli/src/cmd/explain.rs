//! `gavel explain DEPLOYMENT`: the auditor's three questions, answered from the contract and
//! the system of record.

use std::fmt::Write as _;

use serde_json::json;

use gavel_contract::time::Timestamp;
use gavel_contract::{short_hash, Contract, Deployment, UseCase};
use gavel_engine::approval::Registration;
use gavel_engine::approval::{covering_approval, requirements_moved, NotCovered};
use gavel_engine::relevant_scopes;
use gavel_engine::{Approval, Cooldown, Kill, Signoff};
use gavel_ledger_sqlite::SqliteLedgerSink;
use gavel_store::{Role, Store};

use gavel_monitor::CheckState;

use crate::context::out;
use crate::context::{deployment_and_use_case, now, print_json, Context};
use crate::failure::{Failure, Outcome};
use crate::monitoring::{
    alert_deliveries, config_of, newest_records, status, stored_windows, DeploymentStatus,
};

pub fn run(ctx: &Context, deployment_id: &str, as_json: bool) -> Outcome {
    let store = ctx.store()?;
    ctx.authenticate(
        &store,
        &[Role::Auditor, Role::Approver, Role::Operator, Role::Admin],
        "explaining a deployment",
    )?;
    let contract = ctx.contract_in_force(&store)?;
    let sink = crate::ledger::open_sink(&ctx.db_path)?;
    let e = gather(&contract, &store, &sink, deployment_id)?;
    if as_json {
        return print_json(&e.json());
    }
    out!("{}", e.text(&contract.policy.monitoring.window.to_string()));
    Ok(())
}

/// Everything `explain` says about one deployment, read from the contract, the store and the
/// ledger.
pub struct Explanation<'a> {
    pub(crate) d: &'a Deployment,
    pub(crate) use_case: &'a UseCase,
    pub(crate) at: Timestamp,
    pub(crate) approvals: Vec<Approval>,
    pub(crate) covering: Result<Approval, NotCovered>,
    pub(crate) kills: Vec<Kill>,
    pub(crate) cooldowns: Vec<Cooldown>,
    pub(crate) registration: Option<Registration>,
    pub(crate) latest: Vec<serde_json::Value>,
    pub(crate) why_not: Option<String>,
    /// Signals over the window against the covering approval's thresholds.
    pub(crate) performance: DeploymentStatus,
    /// The latest breach records (newest first) and the alert deliveries recorded.
    pub(crate) breaches: Vec<serde_json::Value>,
    pub(crate) pages: Vec<serde_json::Value>,
}

impl Explanation<'_> {
    /// The answers as `gavel explain` prints them; `window_name` is the monitoring window.
    pub fn text(self, window_name: &str) -> String {
        let Explanation {
            d,
            use_case,
            at,
            approvals: _,
            covering,
            kills,
            cooldowns,
            registration,
            latest,
            why_not,
            performance,
            breaches,
            pages,
        } = self;
        let mut text = String::new();
        // One line of the answer (writing to a String cannot fail).
        macro_rules! say {
            ($($arg:tt)*) => {{
                let _ = writeln!(text, $($arg)*);
            }};
        }
        say!(
            "{} ({} use case `{}`, binding {})",
            d.id,
            use_case.tier,
            use_case.id,
            short_hash(&d.binding.0)
        );
        say!("\n1. Who approved it?");
        match &covering {
            Ok(a) => {
                say!(
                    "   approval {} ({}), valid until {}",
                    a.id,
                    a.state_at(at),
                    a.expires_at
                );
                say!("   population: {}", a.population);
                for s in &a.signoffs {
                    say!("   signed by {}", signer(s));
                }
                for e in &a.evidence {
                    say!(
                        "   evidence {}: {} (sha256 {})",
                        e.kind,
                        e.path,
                        short_hash(&e.sha256)
                    );
                }
                say!(
                    "   on breach: {}",
                    serde_json::to_string(&a.on_breach).unwrap_or_default()
                );
                say!(
                    "   under contract version {}",
                    short_hash(&a.contract_version)
                );
                if let Some(why) = &why_not {
                    say!("   but every request is refused: {why}");
                }
            }
            Err(_) => say!(
                "   nobody: {}; every request is refused",
                why_not.unwrap_or_default()
            ),
        }
        for decision in &latest {
            say!(
                "   served {} ({}) at {}, ledger leaf {}",
                decision["decision_id"].as_str().unwrap_or_default(),
                decision["verdict"].as_str().unwrap_or_default(),
                decision["at"].as_str().unwrap_or_default(),
                decision["index"]
            );
        }
        if let Some(r) = &registration {
            say!(
                "   this binding was applied by {} at {}",
                r.changed_by,
                r.at
            );
        }
        say!("\n2. How does it perform against its thresholds?");
        let signals = &performance.signals;
        say!(
            "   over the last {}: {} decisions, {} executions{}",
            window_name,
            signals.decisions,
            signals.executions,
            match &performance.breach {
                Some(b) => format!("; BREACH {} of `{}` since {}", b.id, b.threshold, b.since),
                None => String::new(),
            }
        );
        if performance.checks.is_empty() {
            say!("   no approved thresholds");
        }
        for c in &performance.checks {
            say!(
                "   {}: {} against the approved {} ({} {})",
                c.threshold,
                c.value.map_or("-".to_string(), |v| format!("{v:.4}")),
                c.limit,
                match c.state {
                    CheckState::Within => "within",
                    CheckState::Breached => "BREACHED",
                    CheckState::Insufficient => "too few observations:",
                },
                match c.state {
                    CheckState::Insufficient => c.samples.to_string(),
                    _ => format!("n={}", c.samples),
                }
            );
        }
        say!("\n3. Who is on the hook?");
        say!("   owner: {}", use_case.owner);
        say!("   on-call webhook: {}", use_case.oncall.webhook_shown());
        if let Some(runbook) = &use_case.oncall.runbook {
            say!("   runbook: {runbook}");
        }
        if breaches.is_empty() {
            say!("   paged: never (no breach has been recorded)");
        }
        for b in &breaches {
            let id = b["breach_id"].as_str().unwrap_or_default();
            let page = pages.iter().find(|p| p["breach_id"] == id);
            say!(
                "   breach {id} at {}: {} {} against {}; on-call {}",
                b["since"].as_str().unwrap_or_default(),
                b["threshold"].as_str().unwrap_or_default(),
                b["value"],
                b["limit"],
                match page {
                    Some(p) if p["delivered"] == true =>
                        format!("paged ({} attempt(s))", p["attempts"]),
                    Some(p) => format!(
                        "NOT reached after {} attempt(s): {}",
                        p["attempts"],
                        p["last_error"].as_str().unwrap_or_default()
                    ),
                    None => "alert pending or not recorded".to_string(),
                }
            );
        }
        for k in &kills {
            say!(
                "\nKILLED: `{}` by {} at {}: {}",
                k.scope.key(),
                k.by,
                k.at,
                k.reason
            );
        }
        for c in &cooldowns {
            say!(
                "\nCOOLING DOWN: `{}` until {}: {}",
                c.scope.key(),
                c.until,
                c.reason
            );
        }
        text.truncate(text.trim_end().len());
        text
    }
}

/// Who signed an approval, as which role, when: `rita as risk at 2026-...`.
pub fn signer(s: &Signoff) -> String {
    format!(
        "{}{} at {}",
        s.principal,
        s.approver_role
            .as_ref()
            .map(|r| format!(" as {r}"))
            .unwrap_or_default(),
        s.at
    )
}

pub fn gather<'a>(
    contract: &'a Contract,
    store: &dyn Store,
    sink: &SqliteLedgerSink,
    deployment_id: &str,
) -> Result<Explanation<'a>, Failure> {
    let (d, use_case) = deployment_and_use_case(contract, deployment_id)?;
    let at = now();
    let approvals = store.approvals_of(&d.id)?;
    let covering = covering_approval(&approvals, d, at).cloned();
    let scopes = relevant_scopes(&d.id, &use_case.id, "", None);
    let kills: Vec<_> = store
        .kills(at)?
        .into_iter()
        .filter(|k| scopes.contains(&k.scope))
        .collect();
    let cooldowns: Vec<_> = store
        .cooldowns(at)?
        .into_iter()
        .filter(|c| scopes.contains(&c.scope))
        .collect();
    let registration = store.registration(&d.id)?;
    // The latest decisions served under the covering approval, from the ledger.
    let latest: Vec<serde_json::Value> = match &covering {
        Ok(a) => {
            let filter = gavel_ledger_sqlite::ExportFilter {
                kind: Some(gavel_ledger::RecordKind::Decision),
                approval_id: Some(a.id.clone()),
                limit: Some(5),
                newest_first: true,
                ..Default::default()
            };
            sink
                .query(&filter)
                .map_err(|e| Failure::storage(format!("cannot read the ledger: {e}")))?
                .into_iter()
                .map(|entry| json!({ "index": entry.index, "decision_id": entry.record.id, "verdict": entry.record.body["verdict"], "at": entry.record.body["at"] }))
                .collect()
        }
        Err(_) => Vec::new(),
    };

    let cfg = config_of(&contract.policy.monitoring);
    let windows = stored_windows(store, &cfg, at, Some(&d.id))?;
    let performance = status(contract, store, &windows, at, Some(&d.id))?
        .pop()
        .ok_or_else(|| Failure::invalid(format!("deployment `{deployment_id}` has no use case")))?;
    let breaches = newest_records(sink, gavel_ledger::RecordKind::Breach, &d.id, 5)?;
    let pages = alert_deliveries(sink, &d.id)?;
    let why_not = match &covering {
        Ok(a) => requirements_moved(a, contract, d)
            .map(|why| format!("approval {} no longer meets the contract: {why}", a.id)),
        Err(NotCovered::Missing) => {
            Some("no approval has been made for this deployment".to_string())
        }
        Err(NotCovered::Pending(id)) => Some(format!("approval {id} is pending signoffs")),
        Err(NotCovered::Expired(id)) => Some(format!("approval {id} has expired")),
        Err(NotCovered::Revoked(id)) => Some(format!("approval {id} was revoked")),
        Err(NotCovered::BindingMismatch {
            approval_id,
            approved,
        }) => Some(format!(
            "approval {approval_id} covers binding {}, but the deployment is now {}",
            short_hash(approved),
            short_hash(&d.binding.0)
        )),
    };
    Ok(Explanation {
        d,
        use_case,
        at,
        approvals,
        covering,
        kills,
        cooldowns,
        registration,
        latest,
        why_not,
        performance,
        breaches,
        pages,
    })
}

impl Explanation<'_> {
    pub fn json(&self) -> serde_json::Value {
        let Explanation {
            d,
            use_case,
            approvals,
            covering,
            kills,
            cooldowns,
            registration,
            latest,
            why_not,
            performance,
            breaches,
            pages,
            ..
        } = self;
        json!({
            "deployment": d.id,
            "binding": d.binding,
            "use_case": use_case.id,
            "tier": use_case.tier,
            "who_approved": {
                "approval": covering.as_ref().ok(),
                "not_covered_because": why_not,
                "history": approvals,
                "binding_applied_by": registration.as_ref().map(|r| json!({"principal": r.changed_by, "at": r.at})),
                "latest_decisions": latest,
            },
            "performance": {
                "thresholds": covering.as_ref().ok().map(|a| &a.thresholds),
                "state": performance.state,
                "signals": performance.signals,
                "checks": performance.checks,
                "breach": performance.breach,
            },
            "on_the_hook": {
                "owner": use_case.owner,
                "oncall": {
                    "webhook_origin": use_case.oncall.webhook_origin(),
                    "runbook": use_case.oncall.runbook,
                    "severity_map": use_case.oncall.severity_map,
                },
                "breaches": breaches,
                "paged": pages,
            },
            "state": { "kills": kills, "cooldowns": cooldowns },
        })
    }
}
