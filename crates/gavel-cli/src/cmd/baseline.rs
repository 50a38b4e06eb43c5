//! `gavel baseline` (and `POST /v1/admin/baselines`): records the distributions drift is
//! measured against, with the deployment's approval: from the approval's eval-set run (a JSON
//! Lines file of feature rows) or from a named window of past traffic (the stored rollups).

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use gavel_contract::time::Timestamp;
use gavel_contract::Contract;
use gavel_engine::approval::covering_approval;
use gavel_engine::ApprovalStatus;
use gavel_ledger::RecordKind;
use gavel_monitor::{Baseline, Bucket};
use gavel_store::{KeyRecord, Role, Store, StoredBaseline};

use crate::context::{now, out, Context};
use crate::failure::{Failure, Outcome};
use crate::ledger::Ledger;
use crate::monitoring::{add_row, feature_value};

/// Where a baseline comes from.
pub enum Source {
    /// Feature rows from an eval-set run, one JSON object per line (`{"name": value, ...}` or
    /// `{"features": {...}}`); `label` names the file for the record.
    Rows { label: String, text: String },
    /// Past traffic of the deployment between two times.
    Traffic { from: Timestamp, to: Timestamp },
}

/// Builds the baseline, records it in the ledger and stores it with the deployment's active
/// approval (or its pending one, so that a baseline can be part of the evidence signed).
pub fn record_baseline(
    contract: &Contract,
    store: &dyn Store,
    ledger: &Ledger,
    who: &KeyRecord,
    deployment: &str,
    source: Source,
) -> Result<Value, Failure> {
    let at = now();
    let d = crate::context::known_deployment(contract, deployment)?;
    let approvals = store
        .approvals_of(deployment)
        .map_err(|e| Failure::storage(e.0))?;
    let approval = covering_approval(&approvals, d, at)
        .ok()
        .or_else(|| {
            approvals.iter().rev().find(|a| {
                a.status == ApprovalStatus::Pending && a.binding == d.binding.0 && at < a.expires_at
            })
        })
        .ok_or_else(|| {
            Failure::invalid(format!("`{deployment}` has no active or pending approval of its current binding to record a baseline with; start one with `gavel approve`"))
        })?;
    // The baseline decides what drift is measured against: it is part of what was approved,
    // so it is recorded by one who signed the approval, under the same segregation of duties.
    let applied_by = store.registration(deployment)?.map(|r| r.changed_by);
    if applied_by.as_deref() == Some(who.principal.as_str()) {
        return Err(Failure::invalid(format!(
            "segregation of duties: `{}` applied this version of `{deployment}` and cannot record the baseline its drift is measured against; one of approval {}'s signers must",
            who.principal, approval.id
        )));
    }
    if !approval
        .signoffs
        .iter()
        .any(|s| s.principal == who.principal)
    {
        let signers: Vec<&str> = approval
            .signoffs
            .iter()
            .map(|s| s.principal.as_str())
            .collect();
        return Err(Failure::invalid(format!(
            "only a signer of approval {} ({}) records its baseline: the baseline drift is measured against is part of what they approved",
            approval.id,
            signers.join(", ")
        )));
    }
    // Captured with the approval, once: a different baseline is a different approval.
    let recorded_already = || -> Result<(), Failure> {
        match store.baseline(&approval.id)? {
            Some(earlier) => Err(Failure::invalid(format!(
                "approval {} already has its baseline ({}, recorded by {} at {}); a different baseline needs a new approval",
                approval.id, earlier.source, earlier.recorded_by, earlier.recorded_at
            ))),
            None => Ok(()),
        }
    };
    recorded_already()?;
    let (baseline, source_name) = match source {
        Source::Rows { label, text } => {
            let baseline = from_rows(&text)?;
            let digest = hex::encode(Sha256::digest(text.as_bytes()));
            (baseline, format!("eval:{label}:sha256:{digest}"))
        }
        Source::Traffic { from, to } => {
            if to <= from {
                return Err(Failure::invalid("the traffic window ends before it starts"));
            }
            let mut windows = std::collections::HashMap::new();
            for row in store.rollups_since(from.millis(), Some(deployment))? {
                if row.start_ms < to.millis() {
                    add_row(&mut windows, &row);
                }
            }
            let traffic: Bucket = windows.remove(deployment).unwrap_or_default();
            (
                Baseline {
                    features: traffic.features,
                },
                format!("traffic:{from}..{to}"),
            )
        }
    };
    if baseline.features.is_empty() {
        return Err(Failure::invalid(
            "the baseline has no feature values; give rows with features, or a traffic window in which outcomes reported features",
        ));
    }
    let counts: BTreeMap<&str, u64> = baseline
        .features
        .iter()
        .map(|(name, f)| (name.as_str(), f.count()))
        .collect();
    let body = serde_json::to_string(&baseline)
        .map_err(|e| Failure::storage(format!("cannot encode the baseline: {e}")))?;
    let details = json!({
        "deployment": deployment,
        "approval_id": approval.id,
        "source": source_name,
        "values_per_feature": counts,
        "baseline_sha256": hex::encode(Sha256::digest(body.as_bytes())),
    });
    // Of two requests racing, one claims the approval's baseline while it records and stores
    // it; the other is refused before it records anything. The claim is given back when this
    // one is done, or has failed (so that the baseline can be recorded again); a claim whose
    // holder died is taken over once a minute old.
    let claim = format!("baseline:{}", approval.id);
    let Some(_held) = gavel_store::hold_claim(store, claim, at.millis())? else {
        return Err(Failure::conflict(
            "baseline.recording",
            format!("approval {}'s baseline is being recorded by another request; if that one failed, record it again in a minute", approval.id),
        ));
    };
    // Recorded since the check above by a request that has given its claim back.
    recorded_already()?;
    ledger.record_change(
        RecordKind::Admin,
        at,
        &who.principal,
        "baseline_recorded",
        details.clone(),
    )?;
    store.save_baseline(&StoredBaseline {
        approval_id: approval.id.clone(),
        deployment: deployment.to_string(),
        recorded_at: at,
        recorded_by: who.principal.clone(),
        source: source_name,
        body,
    })?;
    Ok(details)
}

fn from_rows(text: &str) -> Result<Baseline, Failure> {
    let mut baseline = Baseline::default();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let row: Value = serde_json::from_str(line)
            .map_err(|e| Failure::invalid(format!("line {}: not JSON ({e})", n + 1)))?;
        let fields = row
            .get("features")
            .unwrap_or(&row)
            .as_object()
            .ok_or_else(|| {
                Failure::invalid(format!("line {}: expected an object of features", n + 1))
            })?;
        for (name, value) in fields {
            let value = feature_value(value).ok_or_else(|| {
                Failure::invalid(format!(
                    "line {}: feature `{name}` must be a finite number, a string or a boolean",
                    n + 1
                ))
            })?;
            baseline
                .features
                .entry(name.clone())
                .or_default()
                .add(&value);
        }
    }
    Ok(baseline)
}

pub fn run(
    ctx: &Context,
    deployment: &str,
    file: Option<&std::path::Path>,
    from: Option<&str>,
    to: Option<&str>,
) -> Outcome {
    let source = match (file, from, to) {
        (Some(path), None, None) => Source::Rows {
            label: path.display().to_string(),
            text: std::fs::read_to_string(path)
                .map_err(|e| Failure::invalid(format!("cannot read `{}` ({e})", path.display())))?,
        },
        (None, Some(from), Some(to)) => Source::Traffic {
            from: parse_time("from", from)?,
            to: parse_time("to", to)?,
        },
        _ => {
            return Err(Failure::usage(
                "give either --file ROWS.jsonl, or both --from and --to",
            ))
        }
    };
    let store = ctx.store()?;
    let who = ctx.authenticate(&store, &[Role::Approver], "recording a baseline")?;
    // The deployment's binding in force, which its approvals are of.
    let contract = ctx.contract_in_force(&store)?;
    let ledger = Ledger::open(&ctx.db_path)?;
    let recorded = record_baseline(&contract, &store, &ledger, &who, deployment, source);
    ledger.close()?;
    out!("{}", recorded?);
    Ok(())
}

/// An RFC 3339 UTC time (`...Z`) or a date.
pub fn parse_time(flag: &str, text: &str) -> Result<Timestamp, Failure> {
    Timestamp::parse_rfc3339(text)
        .or_else(|| gavel_contract::time::Date::parse(text).map(|d| d.start()))
        .ok_or_else(|| {
            Failure::usage(format!(
                "--{flag} `{text}` is not a date (YYYY-MM-DD) or an RFC 3339 UTC time"
            ))
        })
}
