//! `gavel apply`: records the contract's version and every deployment's binding as applied by
//! the caller. Approvals bind to applied bindings, and whoever applied a binding cannot approve
//! it (segregation of duties).

use gavel_engine::approval::Registration;
use gavel_store::{ContractRecord, Role, Store};

use crate::context::out;
use crate::context::{now, short, Context};
use crate::failure::Outcome;

pub fn run(ctx: &Context) -> Outcome {
    let loaded = ctx.load_contract()?;
    let contract = &loaded.contract;
    let store = ctx.store()?;
    let who = ctx.authenticate(
        &store,
        &[Role::Operator, Role::Admin],
        "applying a contract",
    )?;
    let at = now();
    let new_version = store.record_contract(&ContractRecord {
        version: contract.version.0.clone(),
        applied_by: who.principal.clone(),
        at,
    })?;
    let mut changed = Vec::new();
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
        changed.push(format!("  {} -> binding {}", d.id, short(&d.binding.0)));
    }
    out!(
        "contract {} {} by {}",
        short(&contract.version.0),
        if new_version {
            "applied"
        } else {
            "was already applied; re-applied"
        },
        who.principal
    );
    if changed.is_empty() {
        out!("no deployment changed");
    } else {
        out!(
            "{} deployment(s) changed and need approval of the new binding:",
            changed.len()
        );
        for line in changed {
            out!("{line}");
        }
    }
    Ok(())
}
