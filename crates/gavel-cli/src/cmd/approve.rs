//! `gavel approve`, `gavel revoke`, `gavel approvals`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

use gavel_contract::time::{Span, Timestamp};
use gavel_contract::{short_hash, Contract};
use gavel_engine::approval::{parse_on_breach, sign, Approver, Signing, SignoffOutcome, Terms};
use gavel_engine::{Approval, ApprovalStatus, Evidence, Revocation};
use gavel_ledger::RecordKind;
use gavel_store::{KeyRecord, Role, Store};

use crate::cli::ApproveArgs;
use crate::context::out;
use crate::context::{new_id, now, print_json, Context};
use crate::failure::{Failure, Outcome};
use crate::ledger::Ledger;

pub fn approve(ctx: &Context, args: ApproveArgs) -> Outcome {
    let loaded = ctx.load_contract()?;
    let contract = &loaded.contract;
    let store = ctx.store()?;
    let who = ctx.authenticate(&store, &[Role::Approver], "approving")?;
    // Approvals are judged under the contract in force, never under a local copy.
    if let Some(why) = ctx.not_in_force(&store, &contract.version.0)? {
        return Err(Failure::invalid(format!("approval refused: {why}")));
    }
    let ledger = Ledger::open(&ctx.db_path)?;
    let outcome = sign_off(&store, &ledger, contract, &who, &args);
    ledger.close()?;
    out!("{}", describe(&outcome?));
    Ok(())
}

/// One approver's signoff on a deployment's current binding under `contract` (the one in
/// force): starts an approval (with terms) or adds to the pending one. Recorded before it is
/// stored; a refusal is recorded too.
pub fn sign_off(
    store: &dyn Store,
    ledger: &Ledger,
    contract: &Contract,
    who: &KeyRecord,
    args: &ApproveArgs,
) -> Result<SignoffOutcome, Failure> {
    let at = now();
    let terms = terms_from(args, at, contract)?;
    let deployment = crate::context::known_deployment(contract, &args.deployment)?;
    let pending = store
        .all_approvals()?
        .into_iter()
        .filter(|a| {
            a.deployment == deployment.id
                && a.status == ApprovalStatus::Pending
                && a.expires_at > at
        })
        .filter(|a| a.binding == deployment.binding.0)
        .max_by_key(|a| a.created_at);
    let registration = store.registration(&deployment.id)?;
    let new_id = new_id("apr")?;
    let outcome = sign(
        contract,
        Signing {
            deployment_id: &deployment.id,
            pending: pending.as_ref(),
            terms,
            approver: Approver {
                principal: &who.principal,
                approver_role: who.approver_role.as_deref(),
            },
            registration: registration.as_ref(),
            new_id: &new_id,
            now: at,
        },
    );
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(why) => {
            // A refused approval is an admin action too: the attempt is on the record.
            ledger.record_change(
                RecordKind::Admin,
                at,
                &who.principal,
                "approval_refused",
                json!({ "deployment": deployment.id, "binding": deployment.binding, "why": why }),
            )?;
            return Err(Failure::invalid(format!("approval refused: {why}")));
        }
    };
    let (kind, action) = match &outcome {
        SignoffOutcome::Completed(_) => (RecordKind::ApprovalCompleted, "approval_completed"),
        SignoffOutcome::Pending { .. } => (RecordKind::ApprovalPending, "approval_pending"),
    };
    let approval = outcome.approval();
    ledger.record_change(kind, at, &who.principal, action, json!({ "approval_id": approval.id, "deployment": approval.deployment, "approver_role": who.approver_role, "approval": approval }))?;
    if !store.save_approval(approval, pending.as_ref())? {
        abort(ledger, &who.principal, &approval.id, at)?;
    }
    Ok(outcome)
}

/// One sentence on where a signoff left the approval.
pub fn describe(outcome: &SignoffOutcome) -> String {
    match outcome {
        SignoffOutcome::Completed(a) => format!(
            "approval {} of `{}` is active: binding {}, until {}",
            a.id,
            a.deployment,
            short_hash(&a.binding),
            a.expires_at
        ),
        SignoffOutcome::Pending { approval, missing } => format!(
            "approval {} of `{}` is pending; still needed: {}",
            approval.id,
            approval.deployment,
            missing.join("; ")
        ),
    }
}

/// The terms, if any were given; starting an approval needs population, expiry and on_breach.
fn terms_from(
    args: &ApproveArgs,
    at: Timestamp,
    contract: &Contract,
) -> Result<Option<Terms>, Failure> {
    let any = args.population.is_some()
        || args.expires.is_some()
        || args.on_breach.is_some()
        || !args.thresholds.is_empty()
        || !args.evidence.is_empty();
    if !any {
        return Ok(None);
    }
    let population = args
        .population
        .clone()
        .ok_or_else(|| Failure::invalid("a new approval needs --population (who it covers)"))?;
    crate::ledger::without_secret("--population", &population)?;
    let expires = args
        .expires
        .as_deref()
        .ok_or_else(|| Failure::invalid("a new approval needs --expires"))?;
    let expires_at = parse_expiry(expires, at)?;
    let on_breach = parse_on_breach(args.on_breach.as_deref().ok_or_else(|| {
        Failure::invalid(
            "a new approval needs --on-breach (cooldown:<duration>, fallback or block)",
        )
    })?)
    .map_err(Failure::invalid)?;
    let mut thresholds = BTreeMap::new();
    for t in &args.thresholds {
        let (name, value) = t
            .split_once('=')
            .ok_or_else(|| Failure::invalid(format!("--threshold `{t}` is not NAME=VALUE")))?;
        let value: f64 = value.parse().map_err(|_| {
            Failure::invalid(format!("--threshold `{t}`: `{value}` is not a number"))
        })?;
        thresholds.insert(name.to_string(), value);
    }
    let mut evidence = Vec::new();
    for e in &args.evidence {
        let (kind, path) = e
            .split_once('=')
            .ok_or_else(|| Failure::invalid(format!("--evidence `{e}` is not KIND=PATH")))?;
        evidence.push(Evidence {
            kind: kind.to_string(),
            path: path.to_string(),
            sha256: evidence_sha256(contract, path)?,
        });
    }
    Ok(Some(Terms {
        population,
        expires_at,
        thresholds,
        on_breach,
        evidence,
    }))
}

/// Someone else changed the approval between our read and our write: the change recorded a
/// moment ago did not take effect, and the ledger says so.
fn abort(ledger: &Ledger, principal: &str, approval_id: &str, at: Timestamp) -> Outcome {
    ledger.record_change(
        RecordKind::Admin,
        at,
        principal,
        "approval_change_aborted",
        json!({ "approval_id": approval_id, "why": "changed concurrently" }),
    )?;
    Err(Failure::invalid(format!(
        "approval {approval_id} changed while this command ran (another signoff or a revocation); nothing was changed, look again with `gavel approvals`"
    )))
}

fn parse_expiry(text: &str, at: Timestamp) -> Result<Timestamp, Failure> {
    if let Ok(span) = Span::parse(text) {
        return Ok(at.saturating_add(span));
    }
    Timestamp::parse_rfc3339(text).ok_or_else(|| {
        Failure::invalid(format!("--expires `{text}` is not a date (YYYY-MM-DD), an RFC 3339 time or a duration like 90d"))
    })
}

/// The largest evidence file hashed.
const EVIDENCE_MAX_BYTES: u64 = 256 << 20;

/// The SHA-256 of an evidence file: a path relative to the contract's folder (as the contract's
/// own files are) to a regular file inside that folder, of at most 256 MiB, hashed as it is read.
/// The gateway hashes evidence for approvers calling over HTTP: without these bounds an
/// approver could have it read any file it can (`/etc/shadow`) or one without end
/// (`/dev/zero`, which filled its memory).
fn evidence_sha256(contract: &Contract, path: &str) -> Result<String, Failure> {
    let refuse = |why: String| Failure::invalid(format!("evidence file `{path}`: {why}"));
    let folder = contract
        .source
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let root = folder
        .canonicalize()
        .map_err(|e| refuse(format!("the contract's folder cannot be resolved ({e})")))?;
    let file = root.join(path).canonicalize().map_err(|e| {
        refuse(format!(
            "cannot be read ({e}); evidence paths are relative to the contract's folder"
        ))
    })?;
    if !file.starts_with(&root) {
        return Err(refuse(
            "it is outside the contract's folder; evidence lives with the contract, where an auditor can hash it again".into(),
        ));
    }
    // Opened without following a symlink swapped in since the path was resolved, and without
    // waiting (opening a FIFO waits for a writer); then checked on the open file itself.
    let opened = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&file)
            .map_err(|e| refuse(format!("cannot be read ({e})")))?
    };
    let meta = opened
        .metadata()
        .map_err(|e| refuse(format!("cannot be read ({e})")))?;
    if !meta.is_file() {
        return Err(refuse("it is not a regular file".into()));
    }
    let mut hasher = Sha256::new();
    let hashed = std::io::copy(&mut opened.take(EVIDENCE_MAX_BYTES + 1), &mut hasher)
        .map_err(|e| refuse(format!("cannot be read ({e})")))?;
    if hashed > EVIDENCE_MAX_BYTES {
        return Err(refuse(format!(
            "it is larger than {} MiB; hash large artefacts yourself and give a small file that names them",
            EVIDENCE_MAX_BYTES >> 20
        )));
    }
    Ok(hex::encode(hasher.finalize()))
}

pub fn revoke(ctx: &Context, approval_id: &str, reason: &str) -> Outcome {
    let store = ctx.store()?;
    let who = ctx.authenticate(&store, &[Role::Approver], "revoking an approval")?;
    let ledger = Ledger::open(&ctx.db_path)?;
    let revoked = revoke_as(&store, &ledger, &who, approval_id, reason);
    ledger.close()?;
    out!("{}", revoked?);
    Ok(())
}

/// Revokes an approval as `who`: recorded, then stored compare-and-set.
pub fn revoke_as(
    store: &dyn Store,
    ledger: &Ledger,
    who: &KeyRecord,
    approval_id: &str,
    reason: &str,
) -> Result<String, Failure> {
    crate::ledger::without_secret("the reason", reason)?;
    let mut approval = store.approval(approval_id)?.ok_or_else(|| {
        Failure::invalid(format!(
            "no approval `{approval_id}`; see `gavel approvals`"
        ))
    })?;
    if approval.status == ApprovalStatus::Revoked {
        return Err(Failure::invalid(format!(
            "approval {approval_id} is already revoked"
        )));
    }
    if reason.trim().is_empty() {
        return Err(Failure::invalid("a revocation must say why (--reason)"));
    }
    let read = approval.clone();
    let at = now();
    gavel_engine::approval::revoke(
        &mut approval,
        Revocation {
            by: who.principal.clone(),
            at,
            reason: reason.to_string(),
        },
    );
    ledger.record_change(
        RecordKind::ApprovalRevoked,
        at,
        &who.principal,
        "approval_revoked",
        json!({ "approval_id": approval.id, "deployment": approval.deployment, "reason": reason }),
    )?;
    if !store.save_approval(&approval, Some(&read))? {
        abort(ledger, &who.principal, &approval.id, at)?;
    }
    Ok(format!(
        "approval {approval_id} of `{}` revoked by {}",
        approval.deployment, who.principal
    ))
}

pub fn list(ctx: &Context, deployment: Option<&str>, as_json: bool) -> Outcome {
    let store = ctx.store()?;
    ctx.authenticate(
        &store,
        &[Role::Approver, Role::Auditor, Role::Operator, Role::Admin],
        "listing approvals",
    )?;
    let at = now();
    let approvals: Vec<Approval> = store
        .all_approvals()?
        .into_iter()
        .filter(|a| deployment.is_none_or(|d| a.deployment == d))
        .collect();
    if as_json {
        let rows: Vec<_> = approvals
            .iter()
            .map(|a| json!({"state": a.state_at(at), "approval": a}))
            .collect();
        return print_json(&rows);
    }
    out!(
        "{:<30} {:<22} {:<8} {:<13} {:<25} SIGNED BY",
        "ID",
        "DEPLOYMENT",
        "STATE",
        "BINDING",
        "EXPIRES"
    );
    for a in &approvals {
        let signers: Vec<String> = a
            .signoffs
            .iter()
            .map(|s| match &s.approver_role {
                Some(role) => format!("{} ({role})", s.principal),
                None => s.principal.clone(),
            })
            .collect();
        out!(
            "{:<30} {:<22} {:<8} {:<13} {:<25} {}",
            a.id,
            a.deployment,
            a.state_at(at),
            short_hash(&a.binding),
            a.expires_at.to_string(),
            signers.join(", ")
        );
    }
    Ok(())
}
