//! `gavel status` (and `GET /v1/status`): every deployment's state, its signals over the window
//! against the covering approval's thresholds, its approval and owner.

use std::collections::HashMap;

use serde_json::{json, Value};

use gavel_contract::Contract;
use gavel_monitor::{Bound, Bucket, CheckState};
use gavel_store::{Role, Store};

use crate::context::{now, out, Context};
use crate::failure::{Failure, Outcome};
use crate::monitoring::{config_of, status, stored_windows, DeploymentStatus};

/// Who may read the status: everyone but the data path's service keys.
pub const READERS: &[Role] = &[Role::Auditor, Role::Approver, Role::Operator, Role::Admin];

/// The whole status as one JSON document, over `windows` (each deployment's window now).
pub fn gather(
    contract: &Contract,
    store: &dyn Store,
    windows: &HashMap<String, Bucket>,
) -> Result<Value, Failure> {
    let at = now();
    let rows = status(contract, store, windows, at, None)?;
    Ok(json!({
        "at": at.to_rfc3339(),
        "contract_version": contract.version,
        "window": contract.policy.monitoring.window.to_string(),
        "deployments": rows,
    }))
}

pub fn run(ctx: &Context, json_out: bool) -> Outcome {
    let store = ctx.store()?;
    ctx.authenticate(&store, READERS, "reading the status")?;
    let contract = ctx.contract_in_force(&store)?;
    let at = now();
    let cfg = config_of(&contract.policy.monitoring);
    let windows = stored_windows(&store, &cfg, at, None)?;
    if json_out {
        out!("{}", gather(&contract, &store, &windows)?);
        return Ok(());
    }
    let rows = status(&contract, &store, &windows, at, None)?;
    out!(
        "{} deployment(s), signals over the last {} (as of {at})",
        rows.len(),
        contract.policy.monitoring.window
    );
    out!(
        "{:<28} {:<11} {:<32} {}",
        "DEPLOYMENT",
        "STATE",
        "APPROVAL",
        "OWNER"
    );
    for row in &rows {
        print_row(row)?;
    }
    Ok(())
}

fn print_row(row: &DeploymentStatus) -> Outcome {
    let approval = row.approval.as_ref().map_or("-".to_string(), |a| {
        a["id"].as_str().unwrap_or("-").to_string()
    });
    out!(
        "{:<28} {:<11} {:<32} {}",
        row.deployment,
        row.state,
        approval,
        row.owner
    );
    let s = &row.signals;
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", v * 100.0));
    out!(
        "    {} decisions, {} executions; p99 {}; errors {}; abuse {}; fallback {}; accuracy {}; spend ${:.4}{}",
        s.decisions,
        s.executions,
        s.latency_ms.map_or("-".to_string(), |l| format!("{:.0} ms", l.p99)),
        pct(s.error_rate),
        pct(s.abuse_rate),
        pct(s.fallback_rate),
        s.accuracy.map_or("-".to_string(), |a| format!("{a:.3}")),
        s.spend_usd,
        if s.snapshot_changes > 0 { format!("; {} snapshot change(s)", s.snapshot_changes) } else { String::new() },
    );
    for c in &row.checks {
        let sign = match c.bound {
            Bound::Max => "<=",
            Bound::Min => ">=",
        };
        let verdict = match c.state {
            CheckState::Within => "ok".to_string(),
            CheckState::Breached => "BREACH".to_string(),
            CheckState::Insufficient => format!("too few observations ({})", c.samples),
        };
        out!(
            "    {:<10} {:>12} {sign} {:<10} {verdict}",
            c.threshold,
            c.value.map_or("-".to_string(), |v| format!("{v:.4}")),
            c.limit
        );
    }
    if let Some(b) = &row.breach {
        out!(
            "    breach {} on `{}` since {} ({:?})",
            b.id,
            b.threshold,
            b.since,
            b.on_breach
        );
    }
    Ok(())
}
