//! `gavel kill` and `gavel unkill` (operator).

use gavel_contract::time::Span;
use gavel_contract::Contract;
use gavel_engine::{Kill, Scope};
use gavel_ledger::RecordKind;
use gavel_store::{KeyRecord, Role, Store};
use serde_json::json;

use crate::cli::{KillArgs, ScopeArgs};
use crate::context::out;
use crate::context::{now, Context};
use crate::failure::{Failure, Outcome};
use crate::ledger::Ledger;

pub fn scope_of(contract: &Contract, args: &ScopeArgs) -> Result<Scope, Failure> {
    match (&args.deployment, &args.use_case, args.all) {
        (Some(d), None, false) => {
            crate::context::known_deployment(contract, d)?;
            Ok(Scope::Deployment(d.clone()))
        }
        (None, Some(u), false) => {
            if !contract.use_cases.contains_key(u) {
                return Err(Failure::invalid(format!(
                    "use case `{u}` is not in the contract; see `gavel check`"
                )));
            }
            Ok(Scope::UseCase(u.clone()))
        }
        (None, None, true) => Ok(Scope::All),
        _ => Err(Failure::usage(
            "name exactly one of --deployment, --use-case or --all",
        )),
    }
}

pub fn kill(ctx: &Context, args: &KillArgs) -> Outcome {
    let contract = ctx.load_contract()?.contract;
    let store = ctx.store()?;
    let who = ctx.authenticate(&store, &[Role::Operator], "killing")?;
    let ledger = Ledger::open(&ctx.db_path)?;
    let done = kill_as(&store, &ledger, &contract, &who, args);
    ledger.close()?;
    out!("{}", done?);
    Ok(())
}

/// Sets a kill switch as `who`: recorded, then stored. A kill can be extended or made
/// permanent, never shortened: lifting one is `unkill`, which is its own recorded decision.
pub fn kill_as(
    store: &dyn Store,
    ledger: &Ledger,
    contract: &Contract,
    who: &KeyRecord,
    args: &KillArgs,
) -> Result<String, Failure> {
    let scope = scope_of(contract, &args.scope)?;
    if args.reason.trim().is_empty() {
        return Err(Failure::invalid(
            "a kill must say why (--reason; it is shown on every refused request)",
        ));
    }
    crate::ledger::without_secret("--reason", &args.reason)?;
    let at = now();
    let until = args
        .duration
        .as_deref()
        .map(|d| Span::parse(d).map(|span| at.saturating_add(span)))
        .transpose()
        .map_err(|why| Failure::invalid(format!("--for: {why}")))?;
    if let Some(existing) = store.kills(at)?.into_iter().find(|k| k.scope == scope) {
        let shorter = match (existing.until, until) {
            (None, Some(_)) => true,
            (Some(old), Some(new)) => new < old,
            (_, None) => false,
        };
        if shorter {
            return Err(Failure::invalid(format!(
                "`{}` is already killed{}; a new kill may not end sooner (use `gavel unkill` to lift it)",
                scope.key(),
                existing.until.map(|u| format!(" until {u}")).unwrap_or_default()
            )));
        }
    }
    ledger.record_change(
        RecordKind::Kill,
        at,
        &who.principal,
        "kill",
        json!({ "scope": scope.key(), "reason": args.reason, "until": until }),
    )?;
    store.set_kill(&Kill {
        scope: scope.clone(),
        reason: args.reason.clone(),
        by: who.principal.clone(),
        at,
        until,
    })?;
    Ok(match until {
        Some(until) => format!(
            "killed `{}` until {until}: requests get COOLDOWN",
            scope.key()
        ),
        None => format!(
            "killed `{}`: requests get BLOCK until `gavel unkill`",
            scope.key()
        ),
    })
}

pub fn unkill(ctx: &Context, args: &ScopeArgs) -> Outcome {
    let contract = ctx.load_contract()?.contract;
    let store = ctx.store()?;
    let who = ctx.authenticate(&store, &[Role::Operator], "unkilling")?;
    let ledger = Ledger::open(&ctx.db_path)?;
    let done = unkill_as(&store, &ledger, &contract, &who, args);
    ledger.close()?;
    out!("{}", done?);
    Ok(())
}

/// Lifts a kill switch as `who`: recorded, then cleared.
pub fn unkill_as(
    store: &dyn Store,
    ledger: &Ledger,
    contract: &Contract,
    who: &KeyRecord,
    args: &ScopeArgs,
) -> Result<String, Failure> {
    let scope = scope_of(contract, args)?;
    let not_killed = || Failure::invalid(format!("no kill switch is set on `{}`", scope.key()));
    if !store.kills(now())?.iter().any(|k| k.scope == scope) {
        return Err(not_killed());
    }
    ledger.record_change(
        RecordKind::Unkill,
        now(),
        &who.principal,
        "unkill",
        json!({ "scope": scope.key() }),
    )?;
    match store.clear_kill(&scope)? {
        Some(_) => Ok(format!(
            "lifted the kill switch on `{}` ({})",
            scope.key(),
            who.principal
        )),
        None => Err(not_killed()),
    }
}
