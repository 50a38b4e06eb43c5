//! `gavel apply`: records the contract's version (with the files it was built from) and every
//! deployment's binding as applied by the caller, and says what changed since the last applied
//! version, flagging every change that loosens governance. Approvals bind to applied bindings,
//! and whoever applied a binding cannot approve it (segregation of duties).

use gavel_contract::diff::{diff, ContractDiff};
use gavel_engine::approval::Registration;
use gavel_store::{ContractRecord, Role, Store};

use crate::context::out;
use crate::context::{now, short, Context};
use crate::failure::Outcome;

pub fn run(ctx: &Context) -> Outcome {
    let (loaded, snapshot) = gavel_contract::load_with_snapshot(&ctx.contract_path)
        .map_err(|errors| crate::failure::Failure::invalid(errors.to_string()))?;
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
                    short(&record.version)
                );
                None
            }
        },
        None => None,
    };
    let new_version = store.record_contract(
        &ContractRecord {
            version: contract.version.0.clone(),
            applied_by: who.principal.clone(),
            at,
        },
        &snapshot,
    )?;
    let mut rebound = Vec::new();
    for d in contract.deployments.values() {
        let current = store.registration(&d.id)?;
        if current.as_ref().is_some_and(|r| r.binding == d.binding.0) {
            continue;
        }
        store.set_registration(
            &d.id,
            &Registration {
                binding: d.binding.0.clone(),
                changed_by: who.principal.clone(),
                at,
            },
        )?;
        rebound.push(format!("  {} -> binding {}", d.id, short(&d.binding.0)));
    }
    out!(
        "contract {} {} by {}",
        short(&contract.version.0),
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
        out!("{} deployment binding(s) recorded as applied by {}; approvals of earlier bindings no longer cover them:", rebound.len(), who.principal);
        for line in rebound {
            out!("{line}");
        }
    }
    Ok(())
}

fn print_changes(previous: &str, changes: &ContractDiff) -> Outcome {
    out!(
        "changes since {}{}:",
        short(previous),
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
