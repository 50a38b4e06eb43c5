//! `gavel check [PATH]`: validate the contract and summarise it: use cases with tiers,
//! deployments with bindings, which of them lack a valid approval, and the custom rules.

use std::path::Path;

use serde_json::json;

use gavel_contract::short_hash;
use gavel_engine::approval::{covering_approval, requirements_moved, NotCovered};
use gavel_engine::RuntimeState;
use gavel_store::{SqliteStore, Store};

use crate::context::out;
use crate::context::{load_contract_at, now, print_json, Context};
use crate::failure::Outcome;

pub fn run(ctx: &Context, path: Option<&Path>, as_json: bool) -> Outcome {
    let ctx = &path.map_or_else(
        || ctx.with_contract(&ctx.contract_path),
        |p| ctx.with_contract(p),
    );
    let path = &ctx.contract_path;
    let loaded = load_contract_at(path)?;
    let contract = &loaded.contract;
    // The database is optional here: `check` runs in CI on a contract alone.
    let store = SqliteStore::open_existing(&ctx.db_path).ok();
    let at = now();
    let applied = match &store {
        Some(s) => Some(s.contract_applied(&contract.version.0)?.is_some()),
        None => None,
    };
    let mut deployments = Vec::new();
    for d in contract.deployments.values() {
        let approval = match &store {
            None => "unknown (no database)".to_string(),
            Some(s) => match covering_approval(&RuntimeState::approvals_of(s, &d.id)?, d, at) {
                // What this contract would do to the approval: a CI gate sees it before apply.
                Ok(a) => match requirements_moved(a, contract, d) {
                    Some(_) => format!(
                        "stale {} (approved under other requirements: re-approve)",
                        a.id
                    ),
                    None => format!("active {} until {}", a.id, a.expires_at),
                },
                Err(NotCovered::Missing) => "none".to_string(),
                Err(NotCovered::Pending(id)) => format!("pending {id}"),
                Err(NotCovered::Expired(id)) => format!("expired {id}"),
                Err(NotCovered::Revoked(id)) => format!("revoked {id}"),
                Err(NotCovered::BindingMismatch { approval_id, .. }) => {
                    format!("stale {approval_id} (binding changed)")
                }
            },
        };
        let tier = contract.use_case_of(d).map_or("?", |u| u.tier.as_str());
        deployments.push((d, tier, approval));
    }
    if as_json {
        return print_json(&json!({
            "valid": true,
            "file": gavel_contract::contract_file(path),
            "organization": contract.organization,
            "version": contract.version,
            "applied": applied,
            "warnings": loaded.warnings,
            "use_cases": contract.use_cases.values().map(|u| json!({"id": u.id, "domain": u.domain, "tier": u.tier, "owner": u.owner})).collect::<Vec<_>>(),
            "deployments": deployments.iter().map(|(d, tier, approval)| json!({"id": d.id, "use_case": d.use_case, "tier": tier, "binding": d.binding, "approval": approval})).collect::<Vec<_>>(),
            "rules": contract.policy.rules.iter().map(|r| json!({"id": r.id, "action": r.action, "package": r.program.package(), "sha256": r.file.sha256})).collect::<Vec<_>>(),
        }));
    }
    out!(
        "contract OK: {} (organization `{}`), version {}{}",
        gavel_contract::contract_file(path).display(),
        contract.organization,
        short_hash(&contract.version.0),
        match applied {
            Some(true) => ", applied",
            Some(false) => ", NOT applied (run `gavel apply`)",
            None => "",
        }
    );
    for warning in &loaded.warnings {
        out!("warning: {warning}");
    }
    out!("\nuse cases:");
    for u in contract.use_cases.values() {
        out!(
            "  {:<22} {:<13} {:<18} owner {}",
            u.id,
            u.tier.as_str(),
            u.domain,
            u.owner
        );
    }
    out!("\ndeployments:");
    for (d, tier, approval) in &deployments {
        out!(
            "  {:<22} {:<13} binding {}  approval: {approval}",
            d.id,
            tier,
            short_hash(&d.binding.0)
        );
    }
    if !contract.policy.rules.is_empty() {
        out!("\ncustom rules (Rego, run in this order):");
        for r in &contract.policy.rules {
            out!(
                "  {:<22} {:<6} package {}  file {} ({})",
                r.id,
                r.action.as_str(),
                r.program.package(),
                r.file.path.display(),
                short_hash(&r.file.sha256)
            );
        }
    }
    let lacking = deployments
        .iter()
        .filter(|(_, _, a)| !a.starts_with("active"))
        .count();
    out!(
        "\n{lacking} of {} deployment(s) lack a valid approval and will be refused",
        deployments.len()
    );
    Ok(())
}
