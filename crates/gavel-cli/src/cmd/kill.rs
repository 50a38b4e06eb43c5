//! `gavel kill` and `gavel unkill` (operator).

use gavel_contract::time::Span;
use gavel_engine::{Kill, Scope};
use gavel_ledger::RecordKind;
use gavel_store::{Role, Store};
use serde_json::json;

use crate::cli::{KillArgs, ScopeArgs};
use crate::context::out;
use crate::context::{now, Context};
use crate::failure::{Failure, Outcome};
use crate::ledger;

fn scope_of(ctx: &Context, args: &ScopeArgs) -> Result<Scope, Failure> {
    let contract = ctx.load_contract()?.contract;
    match (&args.deployment, &args.use_case, args.all) {
        (Some(d), None, false) => {
            if contract.deployment(d).is_none() {
                return Err(Failure::invalid(format!(
                    "deployment `{d}` is not in the contract; see `gavel check`"
                )));
            }
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
    let scope = scope_of(ctx, &args.scope)?;
    let store = ctx.store()?;
    let who = ctx.authenticate(&store, &[Role::Operator], "killing")?;
    if args.reason.trim().is_empty() {
        return Err(Failure::invalid(
            "--reason must say why (it is shown on every refused request)",
        ));
    }
    let at = now();
    let until = args
        .duration
        .as_deref()
        .map(|d| Span::parse(d).map(|span| at.saturating_add(span)))
        .transpose()
        .map_err(|why| Failure::invalid(format!("--for: {why}")))?;
    // A kill can be extended or made permanent, never shortened: lifting one is `unkill`,
    // which is its own recorded decision.
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
    ledger::record_change(
        &ctx.db_path,
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
    match until {
        Some(until) => out!(
            "killed `{}` until {until}: requests get COOLDOWN",
            scope.key()
        ),
        None => out!(
            "killed `{}`: requests get BLOCK until `gavel unkill`",
            scope.key()
        ),
    }
    Ok(())
}

pub fn unkill(ctx: &Context, args: &ScopeArgs) -> Outcome {
    let scope = scope_of(ctx, args)?;
    let store = ctx.store()?;
    let who = ctx.authenticate(&store, &[Role::Operator], "unkilling")?;
    if !store.kills(now())?.iter().any(|k| k.scope == scope) {
        return Err(Failure::invalid(format!(
            "no kill switch is set on `{}`",
            scope.key()
        )));
    }
    ledger::record_change(
        &ctx.db_path,
        RecordKind::Unkill,
        now(),
        &who.principal,
        "unkill",
        json!({ "scope": scope.key() }),
    )?;
    match store.clear_kill(&scope)? {
        Some(_) => out!(
            "lifted the kill switch on `{}` ({})",
            scope.key(),
            who.principal
        ),
        None => {
            return Err(Failure::invalid(format!(
                "no kill switch is set on `{}`",
                scope.key()
            )))
        }
    }
    Ok(())
}
