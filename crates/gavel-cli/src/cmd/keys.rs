//! `gavel keys create|list|revoke` (admin).

use gavel_ledger::RecordKind;
use gavel_store::{KeyRecord, Role, Store};
use serde_json::json;

use crate::cli::KeysCommand;
use crate::cmd::init::create_key;
use crate::context::{diag, out};
use crate::context::{now, Context};
use crate::failure::{Failure, Outcome};
use crate::ledger::Ledger;

pub fn run(ctx: &Context, command: KeysCommand) -> Outcome {
    let store = ctx.store()?;
    let admin = ctx.authenticate(&store, &[Role::Admin], "managing keys")?;
    match command {
        KeysCommand::Create {
            principal,
            role,
            approver_role,
        } => {
            let role = key_terms(&principal, &role, approver_role.as_deref())?;
            let ledger = Ledger::open(&ctx.db_path)?;
            let key = create_key(
                &store,
                &ledger,
                &principal,
                role,
                approver_role,
                &admin.principal,
            )?;
            ledger.close()?;
            out!("{key}");
            diag!(
                "created a key with role {role} for `{principal}`; it is shown once, only its hash is stored"
            );
        }
        KeysCommand::List => {
            out!(
                "{:<32} {:<20} {:<9} {:<14} {}",
                "ID",
                "PRINCIPAL",
                "ROLE",
                "SIGNS AS",
                "STATE"
            );
            for k in store.keys()? {
                let state = k
                    .revoked_at
                    .map_or("active".to_string(), |t| format!("revoked {t}"));
                out!(
                    "{:<32} {:<20} {:<9} {:<14} {state}",
                    k.id,
                    k.principal,
                    k.role.as_str(),
                    k.approver_role.as_deref().unwrap_or("-")
                );
            }
        }
        KeysCommand::Revoke { id } => {
            let ledger = Ledger::open(&ctx.db_path)?;
            let done = revoke_as(&store, &ledger, &admin, &id);
            ledger.close()?;
            diag!("{}", done?);
        }
    }
    Ok(())
}

/// Revokes an active key as `admin`: recorded, then stored.
pub fn revoke_as(
    store: &dyn Store,
    ledger: &Ledger,
    admin: &KeyRecord,
    id: &str,
) -> Result<String, Failure> {
    let Some(key) = store
        .keys()?
        .into_iter()
        .find(|k| k.id == id && k.revoked_at.is_none())
    else {
        return Err(Failure::invalid(format!(
            "no active key with id `{id}`; see `gavel keys list`"
        )));
    };
    let at = now();
    ledger.record_change(
        RecordKind::KeyRevoked,
        at,
        &admin.principal,
        "key_revoked",
        json!({ "key_id": id, "key_principal": key.principal }),
    )?;
    store.revoke_key(id, at)?;
    Ok(format!("revoked key {id}"))
}

/// Checks a new key's terms: a known role, a printable principal, an approver role only for
/// approvers.
pub fn key_terms(
    principal: &str,
    role: &str,
    approver_role: Option<&str>,
) -> Result<Role, Failure> {
    let role = Role::parse(role).ok_or_else(|| {
        Failure::invalid(format!(
            "unknown role `{role}`; expected service, operator, approver, auditor or admin"
        ))
    })?;
    if principal.trim().is_empty() || principal.chars().any(char::is_control) {
        return Err(Failure::invalid(
            "the principal must be a non-empty name without control characters",
        ));
    }
    if approver_role.is_some() && role != Role::Approver {
        return Err(Failure::invalid(
            "an approver role applies only to keys with role approver",
        ));
    }
    Ok(role)
}
