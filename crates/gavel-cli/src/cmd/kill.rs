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

/// The scope the options name, whatever the contract holds.
fn scope_named(args: &ScopeArgs) -> Result<Scope, Failure> {
    let named: Vec<Scope> = [
        args.deployment.clone().map(Scope::Deployment),
        args.use_case.clone().map(Scope::UseCase),
        args.principal.clone().map(Scope::Principal),
        args.all.then_some(Scope::All),
    ]
    .into_iter()
    .flatten()
    .collect();
    match <[Scope; 1]>::try_from(named) {
        Ok([scope]) => Ok(scope),
        Err(_) => Err(Failure::usage(
            "name exactly one of --deployment, --use-case, --principal or --all",
        )),
    }
}

/// The scope the options name, which must exist: a deployment or use case in `contract` (the
/// one in force), a principal that holds an API key. A kill on a misspelt name would stop
/// nothing while its operator believes it stopped the model. `--all` names nothing a contract
/// must hold, and needs none.
fn scope_in(
    store: &dyn Store,
    contract: Option<&Contract>,
    args: &ScopeArgs,
) -> Result<Scope, Failure> {
    let scope = scope_named(args)?;
    let not_in_force = |kind: &str, name: &str| {
        format!("{kind} `{name}` is not in the contract in force; see `gavel status`")
    };
    let unknown = match &scope {
        Scope::Deployment(d) if contract.is_none_or(|c| c.deployment(d).is_none()) => {
            Some(not_in_force("deployment", d))
        }
        Scope::UseCase(u) if contract.is_none_or(|c| !c.use_cases.contains_key(u)) => {
            Some(not_in_force("use case", u))
        }
        Scope::Principal(p) if !store.keys()?.iter().any(|k| k.principal == *p) => Some(format!(
            "principal `{p}` holds no API key; see `gavel keys list`"
        )),
        _ => None,
    };
    match unknown {
        Some(why) => Err(Failure::invalid(why)),
        None => Ok(scope),
    }
}

/// Checked against the contract in force, not the file: an on-call stopping a model must not
/// depend on what someone left half-edited on disk.
pub fn kill(ctx: &Context, args: &KillArgs) -> Outcome {
    let store = ctx.store()?;
    let who = ctx.authenticate(&store, &[Role::Operator], "killing")?;
    let contract = match ctx.contract_in_force(&store) {
        Ok(contract) => Some(contract),
        // Stopping everything, or a caller, never waits for a contract that loads.
        Err(_) if args.scope.all || args.scope.principal.is_some() => None,
        Err(e) => return Err(e),
    };
    let ledger = Ledger::open(&ctx.db_path)?;
    let done = kill_as(&store, &ledger, contract.as_ref(), &who, args);
    ledger.close()?;
    out!("{}", done?);
    Ok(())
}

/// Sets a kill switch as `who`: recorded, then stored. A kill can be extended or made
/// permanent, never shortened: lifting one is `unkill`, which is its own recorded decision.
/// `contract` is the one in force, None when it cannot be read (then only `--all` and
/// `--principal` are taken).
pub fn kill_as(
    store: &dyn Store,
    ledger: &Ledger,
    contract: Option<&Contract>,
    who: &KeyRecord,
    args: &KillArgs,
) -> Result<String, Failure> {
    let scope = scope_in(store, contract, &args.scope)?;
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
    let store = ctx.store()?;
    let who = ctx.authenticate(&store, &[Role::Operator], "unkilling")?;
    let ledger = Ledger::open(&ctx.db_path)?;
    let done = unkill_as(&store, &ledger, &who, args);
    ledger.close()?;
    out!("{}", done?);
    Ok(())
}

/// Lifts a kill switch as `who`: recorded, then cleared. Any kill that is set can be lifted,
/// also one on a deployment or use case the contract in force no longer has.
pub fn unkill_as(
    store: &dyn Store,
    ledger: &Ledger,
    who: &KeyRecord,
    args: &ScopeArgs,
) -> Result<String, Failure> {
    let scope = scope_named(args)?;
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
