//! `gavel apply`: records the contract's version (with the files it was built from) and every
//! deployment's binding as applied by the caller, and says what changed since the last applied
//! version, flagging every change that loosens governance. The change is written to the ledger
//! before it takes effect. Approvals bind to applied bindings, and whoever applied a binding
//! cannot approve it (segregation of duties).

use gavel_contract::diff::{diff, ContractDiff};
use gavel_contract::short_hash;
use gavel_engine::approval::Registration;
use gavel_ledger::RecordKind;
use gavel_store::{ContractRecord, Role, Store};
use serde_json::json;

use crate::context::out;
use crate::context::{now, Context};
use crate::failure::{Failure, Outcome};
use crate::ledger;

pub fn run(ctx: &Context) -> Outcome {
    let (loaded, snapshot) = gavel_contract::load_with_snapshot(&ctx.contract_path)
        .map_err(|errors| Failure::invalid(errors.to_string()))?;
    let contract = &loaded.contract;
    let store = ctx.store()?;
    let who = ctx.authenticate(
        &store,
        &[Role::Operator, Role::Admin],
        "applying a contract",
    )?;
    let at = now();
    let previous = store.latest_contract()?;
    let changes = match &previous {
        // The previous version reloads from its own files; if that fails (a newer gavel
        // changed validation), say so rather than pretend nothing changed.
        Some((record, files)) => match files.load() {
            Ok(old) => Some(diff(&old.contract, contract)),
            Err(e) => {
                out!(
                    "cannot reload the previous version {} to compare: {e}",
                    short_hash(&record.version)
                );
                None
            }
        },
        None => None,
    };
    let mut rebound = Vec::new();
    for d in contract.deployments.values() {
        if store
            .registration(&d.id)?
            .is_none_or(|r| r.binding != d.binding.0)
        {
            rebound.push(d);
        }
    }
    let summary: Vec<String> = changes
        .iter()
        .flat_map(|c| c.changes.iter())
        .map(|c| format!("{}{}", if c.loosening { "LOOSENS " } else { "" }, c.what))
        .collect();
    ledger::record_change(
        &ctx.db_path,
        RecordKind::ContractLoaded,
        at,
        &who.principal,
        "contract_loaded",
        json!({
            "contract_version": contract.version,
            "previous_version": previous.as_ref().map(|(r, _)| &r.version),
            "changes": summary,
            // When the previous version cannot be compared, assume the worst.
            "loosening": previous.is_some() && changes.as_ref().is_none_or(ContractDiff::loosening),
            "rebound": rebound.iter().map(|d| json!({"deployment": d.id, "binding": d.binding})).collect::<Vec<_>>(),
        }),
    )?;
    let new_version = store.record_contract(
        &ContractRecord {
            version: contract.version.0.clone(),
            applied_by: who.principal.clone(),
            at,
        },
        &snapshot,
    )?;
    for d in &rebound {
        store.set_registration(
            &d.id,
            &Registration {
                binding: d.binding.0.clone(),
                changed_by: who.principal.clone(),
                at,
            },
        )?;
    }
    out!(
        "contract {} {} by {}",
        short_hash(&contract.version.0),
        if new_version {
            "applied"
        } else {
            "was applied before; it is the current version again"
        },
        who.principal
    );
    match (&previous, &changes) {
        (None, _) => out!("first contract applied"),
        (Some((record, _)), Some(changes)) if record.version != contract.version.0 => {
            print_changes(&record.version, changes)?
        }
        _ => {}
    }
    if rebound.is_empty() {
        out!("no deployment binding changed");
    } else {
        out!(
            "{} deployment binding(s) recorded as applied by {}; approvals of earlier bindings no longer cover them:",
            rebound.len(),
            who.principal
        );
        for d in rebound {
            out!("  {} -> binding {}", d.id, short_hash(&d.binding.0));
        }
    }
    Ok(())
}

fn print_changes(previous: &str, changes: &ContractDiff) -> Outcome {
    out!(
        "changes since {}{}:",
        short_hash(previous),
        if changes.loosening() {
            " (LOOSENING: review the flagged lines)"
        } else {
            ""
        }
    );
    for change in &changes.changes {
        out!(
            "  {} {}",
            if change.loosening {
                "LOOSENS"
            } else {
                "-      "
            },
            change.what
        );
    }
    Ok(())
}
