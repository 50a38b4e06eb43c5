//! `gavel apply`: records the contract's version (with the files it was built from) and every
//! deployment's binding as applied by the caller, and says what changed since the last applied
//! version, flagging every change that loosens governance. The change is written to the ledger
//! before it takes effect. Approvals bind to applied bindings, and whoever applied a binding
//! cannot approve it (segregation of duties).

use gavel_contract::diff::{diff, ContractDiff};
use gavel_contract::time::Timestamp;
use gavel_contract::{short_hash, Contract, Snapshot};
use gavel_engine::approval::Registration;
use gavel_ledger::RecordKind;
use gavel_store::{ContractRecord, Role, Store};
use serde_json::json;

use crate::context::out;
use crate::context::{now, Context};
use crate::failure::{Failure, Outcome};
use crate::ledger::Ledger;

pub fn run(ctx: &Context) -> Outcome {
    let (loaded, snapshot) = gavel_contract::load_with_snapshot(&ctx.contract_path)
        .map_err(|errors| Failure::invalid(errors.to_string()))?;
    let store = ctx.store()?;
    let who = ctx.authenticate(
        &store,
        &[Role::Operator, Role::Admin],
        "applying a contract",
    )?;
    let ledger = Ledger::open(&ctx.db_path)?;
    let applied = apply(
        &store,
        &ledger,
        &loaded.contract,
        &snapshot,
        &who.principal,
        now(),
    );
    ledger.close()?;
    let applied = applied?;
    let contract = &loaded.contract;
    if let Some(why) = &applied.in_doubt {
        out!("LOOSENING, taken to be: {why}");
    }
    out!(
        "contract {} {} by {}",
        short_hash(&contract.version.0),
        if applied.new_version {
            "applied"
        } else {
            "was applied before; it is the current version again"
        },
        who.principal
    );
    match (&applied.previous, &applied.changes) {
        (None, _) => out!("first contract applied"),
        (Some(previous), Some(changes)) if *previous != contract.version.0 => {
            print_changes(previous, changes)?
        }
        _ => {}
    }
    if applied.rebound.is_empty() {
        out!("no deployment binding changed");
    } else {
        out!(
            "{} deployment binding(s) recorded as applied by {}; approvals of earlier bindings no longer cover them:",
            applied.rebound.len(),
            who.principal
        );
        for (id, binding) in &applied.rebound {
            out!("  {id} -> binding {}", short_hash(binding));
        }
    }
    Ok(())
}

/// What applying a contract changed.
pub struct Applied {
    /// The version in force before, if any.
    pub previous: Option<String>,
    /// What changed since `previous` (None when there is no previous version or it could not
    /// be reloaded to compare: see `in_doubt`).
    pub changes: Option<ContractDiff>,
    /// Why the comparison with `previous` is missing or in doubt: the change is then taken to
    /// loosen governance.
    pub in_doubt: Option<String>,
    /// Whether the change was recorded as loosening governance.
    pub loosening: bool,
    /// Deployments whose binding is new: (deployment, binding).
    pub rebound: Vec<(String, String)>,
    /// False when this exact version had been applied before.
    pub new_version: bool,
}

/// Makes `contract` the version in force, as `principal` did: recorded in the ledger (with what
/// changed and whether it loosens governance) before the store changes. Shared by `gavel apply`
/// and the gateway's reload.
pub fn apply(
    store: &dyn Store,
    ledger: &Ledger,
    contract: &Contract,
    snapshot: &Snapshot,
    principal: &str,
    at: Timestamp,
) -> Result<Applied, Failure> {
    let previous = store.latest_contract()?;
    let mut in_doubt = None;
    let changes = match &previous {
        // The previous version reloads from its own files; if that fails (a newer gavel
        // changed validation), say so rather than pretend nothing changed.
        Some((record, files)) => match files.load() {
            // The same files read as another contract: this gavel's built-in defaults (the
            // price table, image tokens, monitoring defaults) changed since, or the stored
            // files were altered. A comparison with it is the best there is, but it hides
            // whatever the difference loosened (the new version has it too).
            Ok(old) => {
                if old.contract.version.0 != record.version {
                    in_doubt = Some(format!(
                        "the previous version {} reloads as {} (this gavel's built-in defaults changed since it was applied, or its stored files were altered): the changes listed are against it as it reloads",
                        short_hash(&record.version),
                        short_hash(&old.contract.version.0)
                    ));
                }
                Some(diff(&old.contract, contract))
            }
            Err(e) => {
                in_doubt = Some(format!(
                    "cannot reload the previous version {} to compare: {e}",
                    short_hash(&record.version)
                ));
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
            rebound.push((d.id.clone(), d.binding.0.clone()));
        }
    }
    let summary: Vec<String> = changes
        .iter()
        .flat_map(|c| c.changes.iter())
        .map(|c| format!("{}{}", if c.loosening { "LOOSENS " } else { "" }, c.what))
        .chain(
            in_doubt
                .iter()
                .map(|why| format!("LOOSENS (taken to, in doubt) {why}")),
        )
        .collect();
    // When the previous version cannot be compared, or only in doubt, assume the worst.
    let loosening = previous.is_some()
        && (in_doubt.is_some() || changes.as_ref().is_none_or(ContractDiff::loosening));
    ledger.record_change(
        RecordKind::ContractLoaded,
        at,
        principal,
        "contract_loaded",
        json!({
            "contract_version": contract.version,
            "previous_version": previous.as_ref().map(|(r, _)| &r.version),
            "changes": summary,
            "loosening": loosening,
            "rebound": rebound.iter().map(|(d, b)| json!({"deployment": d, "binding": b})).collect::<Vec<_>>(),
        }),
    )?;
    let new_version = store.record_contract(
        &ContractRecord {
            version: contract.version.0.clone(),
            applied_by: principal.to_string(),
            at,
        },
        snapshot,
    )?;
    for (deployment, binding) in &rebound {
        store.set_registration(
            deployment,
            &Registration {
                binding: binding.clone(),
                changed_by: principal.to_string(),
                at,
            },
        )?;
    }
    Ok(Applied {
        previous: previous.map(|(r, _)| r.version),
        changes,
        in_doubt,
        loosening,
        rebound,
        new_version,
    })
}

/// What changed since `previous`, one line a change, the loosening ones flagged.
pub fn print_changes(previous: &str, changes: &ContractDiff) -> Outcome {
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
