//! The admin API: keys, approvals, kill switches, status, explain, ledger queries and proofs.
//! Each action is the CLI's own (the same function, the same checks, recorded in the ledger
//! before it takes effect); roles are checked by the route table before a handler runs.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use gavel_ledger::VerifyOptions;
use gavel_store::{KeyRecord, Store};

use super::api::{blocking, typed};
use super::dashboard::Verification;
use super::error::{ApiError, ApiResult};
use super::gateway::Gateway;
use crate::cli::{ApproveArgs, ExportArgs, KillArgs, ScopeArgs};
use crate::cmd::baseline::{self, Source};
use crate::cmd::evidence::{Pack, PackRequest};
use crate::cmd::{approve, audit, explain, keys, kill, status};
use crate::context::now;
use crate::failure::Failure;

/// Runs an action with the gateway's store, ledger and contract, off the async workers.
async fn act(
    gw: Arc<Gateway>,
    action: impl FnOnce(&Gateway) -> Result<Value, Failure> + Send + 'static,
) -> ApiResult<Json<Value>> {
    blocking(move || action(&gw).map_err(ApiError::from))
        .await
        .map(Json)
}

pub async fn list_keys(State(gw): State<Arc<Gateway>>) -> ApiResult<Json<Value>> {
    act(gw, |gw| {
        let keys: Vec<Value> = gw
            .store
            .keys()?
            .into_iter()
            .map(|k| json!({ "id": k.id, "principal": k.principal, "role": k.role.as_str(), "approver_role": k.approver_role, "created_at": k.created_at, "revoked_at": k.revoked_at }))
            .collect();
        Ok(json!({ "keys": keys }))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    principal: String,
    role: String,
    #[serde(default)]
    approver_role: Option<String>,
}

pub async fn create_key(
    State(gw): State<Arc<Gateway>>,
    Extension(admin): Extension<KeyRecord>,
    request: Request,
) -> ApiResult<Json<Value>> {
    let body: NewKey = body_of(&gw, request).await?;
    act(gw, move |gw| {
        let role = keys::key_terms(&body.principal, &body.role, body.approver_role.as_deref())?;
        let key = crate::cmd::init::create_key(&gw.store, &gw.ledger, &body.principal, role, body.approver_role.clone(), &admin.principal)?;
        Ok(json!({ "key": key, "principal": body.principal, "role": role.as_str(), "note": "shown once; only its hash is stored" }))
    })
    .await
}

pub async fn revoke_key(
    State(gw): State<Arc<Gateway>>,
    Extension(admin): Extension<KeyRecord>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    act(gw, move |gw| {
        Ok(json!({ "message": keys::revoke_as(&gw.store, &gw.ledger, &admin, &id)? }))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentQuery {
    #[serde(default)]
    deployment: Option<String>,
}

pub async fn list_approvals(
    State(gw): State<Arc<Gateway>>,
    Query(query): Query<DeploymentQuery>,
) -> ApiResult<Json<Value>> {
    act(gw, move |gw| {
        let at = now();
        let rows: Vec<Value> = gw
            .store
            .all_approvals()?
            .into_iter()
            .filter(|a| query.deployment.as_ref().is_none_or(|d| &a.deployment == d))
            .map(|a| json!({ "state": a.state_at(at), "approval": a }))
            .collect();
        Ok(json!({ "approvals": rows }))
    })
    .await
}

pub async fn approve(
    State(gw): State<Arc<Gateway>>,
    Extension(who): Extension<KeyRecord>,
    request: Request,
) -> ApiResult<Json<Value>> {
    let args: ApproveArgs = body_of(&gw, request).await?;
    act(gw, move |gw| {
        // The gateway's engine holds the contract in force: approvals are judged under it.
        let engine = gw.engine();
        let outcome = approve::sign_off(&gw.store, &gw.ledger, engine.contract(), &who, &args)?;
        Ok(json!({ "message": approve::describe(&outcome), "approval": outcome.approval() }))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Because {
    reason: String,
}

pub async fn revoke_approval(
    State(gw): State<Arc<Gateway>>,
    Extension(who): Extension<KeyRecord>,
    Path(id): Path<String>,
    request: Request,
) -> ApiResult<Json<Value>> {
    let body: Because = body_of(&gw, request).await?;
    act(gw, move |gw| Ok(json!({ "message": approve::revoke_as(&gw.store, &gw.ledger, &who, &id, &body.reason)? }))).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillBody {
    #[serde(default)]
    deployment: Option<String>,
    #[serde(default)]
    use_case: Option<String>,
    #[serde(default)]
    principal: Option<String>,
    #[serde(default)]
    all: bool,
    reason: String,
    #[serde(default, rename = "for")]
    duration: Option<String>,
}

pub async fn kill(
    State(gw): State<Arc<Gateway>>,
    Extension(who): Extension<KeyRecord>,
    request: Request,
) -> ApiResult<Json<Value>> {
    let body: KillBody = body_of(&gw, request).await?;
    act(gw, move |gw| {
        let args = KillArgs {
            scope: ScopeArgs { deployment: body.deployment, use_case: body.use_case, principal: body.principal, all: body.all },
            reason: body.reason,
            duration: body.duration,
        };
        Ok(json!({ "message": kill::kill_as(&gw.store, &gw.ledger, Some(gw.engine().contract()), &who, &args)? }))
    })
    .await
}

pub async fn unkill(
    State(gw): State<Arc<Gateway>>,
    Extension(who): Extension<KeyRecord>,
    request: Request,
) -> ApiResult<Json<Value>> {
    let scope: ScopeArgs = body_of(&gw, request).await?;
    act(gw, move |gw| {
        Ok(json!({ "message": kill::unkill_as(&gw.store, &gw.ledger, &who, &scope)? }))
    })
    .await
}

/// Every deployment's state, its signals against its approved thresholds, approval and owner
/// (as `gavel status --json`).
pub async fn status(State(gw): State<Arc<Gateway>>) -> ApiResult<Json<Value>> {
    act(gw, |gw| {
        // The live windows: this process's buckets and other writers' rows as of the last
        // evaluation (at most a second old), with no storage to parse.
        let engine = gw.engine();
        let windows = gw.monitor.windows(&engine.contract().policy.monitoring);
        status::gather(engine.contract(), &gw.store, &windows)
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineBody {
    deployment: String,
    /// Feature rows of an eval-set run: objects of features.
    #[serde(default)]
    rows: Option<Vec<Value>>,
    /// A name for the rows (e.g. the eval set's file), kept in the record.
    #[serde(default)]
    label: Option<String>,
    /// A window of past traffic instead: RFC 3339 UTC times or dates.
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
}

/// Records a drift baseline with the deployment's approval (as `gavel baseline`).
pub async fn baseline(
    State(gw): State<Arc<Gateway>>,
    Extension(caller): Extension<KeyRecord>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let body: BaselineBody = typed(&gw.read_body(body).await?)?;
    let source = match (body.rows, body.from, body.to) {
        (Some(rows), None, None) => Source::Rows {
            label: body.label.unwrap_or_else(|| "api".into()),
            text: rows
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        },
        (None, Some(from), Some(to)) => Source::Traffic {
            from: baseline::parse_time("from", &from)?,
            to: baseline::parse_time("to", &to)?,
        },
        _ => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "give either `rows` (feature objects) or both `from` and `to`",
            ))
        }
    };
    act(gw, move |gw| {
        let recorded = baseline::record_baseline(
            gw.engine().contract(),
            &gw.store,
            &gw.ledger,
            &caller,
            &body.deployment,
            source,
        )?;
        if let Some(approval) = recorded["approval_id"].as_str() {
            gw.monitor.forget_baseline(approval);
        }
        Ok(recorded)
    })
    .await
}

pub async fn explain(
    State(gw): State<Arc<Gateway>>,
    Path(deployment): Path<String>,
) -> ApiResult<Json<Value>> {
    act(gw, move |gw| {
        let engine = gw.engine();
        let sink = gw.ledger_reader()?;
        Ok(explain::gather(engine.contract(), &gw.store, &sink, &deployment)?.json())
    })
    .await
}

/// `GET /v1/audit/records?...`: JSON Lines, as `gavel audit export`.
pub async fn records(State(gw): State<Arc<Gateway>>, Query(args): Query<ExportArgs>) -> Response {
    let result = blocking(move || {
        let filter = audit::export_filter(&args)?;
        let mut out = Vec::new();
        gw.ledger_reader()?
            .export_jsonl(&filter, &mut out)
            .map_err(|e| ApiError::unavailable(format!("export failed: {e}")))?;
        Ok(out)
    })
    .await;
    match result {
        Ok(lines) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/jsonl"),
            )],
            lines,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn record(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    act(gw, move |gw| {
        let entry = gw
            .ledger_reader()?
            .record_by_id(&id)
            .map_err(Failure::storage)?
            .ok_or_else(|| Failure::invalid(format!("no ledger record with id `{id}`")))?;
        Ok(json!({ "index": entry.index, "record": entry.record }))
    })
    .await
}

pub async fn proof(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    act(gw, move |gw| {
        let bundle = gw
            .ledger_reader()?
            .prove(&id, &gw.prover)
            .map_err(|e| Failure::invalid(format!("cannot prove `{id}`: {e}")))?;
        serde_json::to_value(bundle)
            .map_err(|e| Failure::storage(format!("cannot encode the proof: {e}")))
    })
    .await
}

pub async fn verify(
    State(gw): State<Arc<Gateway>>,
    Extension(caller): Extension<KeyRecord>,
) -> ApiResult<Json<Value>> {
    verify_ledger(gw, caller.principal).await.map(Json)
}

/// Verifies the ledger and keeps the result for the dashboard: `{ok, records, checkpoints,
/// unsigned_tail}` or `{ok: false, failure}`.
pub async fn verify_ledger(gw: Arc<Gateway>, by: String) -> ApiResult<Value> {
    blocking(move || {
        let verified = gw
            .ledger_reader()?
            .verify(gw.prover.verifier(), VerifyOptions::default());
        let (answer, outcome) = match verified {
            Ok(report) => (
                json!({ "ok": true, "records": report.records, "checkpoints": report.checkpoints, "unsigned_tail": report.unsigned_tail }),
                Ok(format!(
                    "{} records, {} signed checkpoints, {} record(s) after the newest checkpoint",
                    report.records, report.checkpoints, report.unsigned_tail
                )),
            ),
            Err(gavel_ledger::VerifyError::Failed(failure)) => (
                json!({ "ok": false, "failure": failure.to_string() }),
                Err(failure.to_string()),
            ),
            Err(e) => return Err(ApiError::from(Failure::storage(e))),
        };
        if let Ok(mut last) = gw.last_verification.lock() {
            *last = Some(Verification { at: now(), by, outcome });
        }
        Ok(answer)
    })
    .await
}

/// `POST /v1/admin/evidence`: a deployment's evidence pack, as `gavel evidence` writes it,
/// recorded in the ledger as the caller's; its files in the answer, text as it is and other
/// bytes in base64 (`gavel evidence --url` writes them into a folder).
pub async fn evidence(
    State(gw): State<Arc<Gateway>>,
    Extension(caller): Extension<KeyRecord>,
    request: Request,
) -> ApiResult<Json<Value>> {
    let wanted: PackRequest = body_of(&gw, request).await?;
    act(gw, move |gw| {
        // The bytes of the version the gateway runs: as the store keeps them when it is the
        // version applied last, else as the file holds them if it is still that version.
        let engine = gw.engine();
        let running = &engine.contract().version.0;
        let snapshot = match gw.store.latest_contract()? {
            Some((applied, snapshot)) if applied.version == *running => snapshot,
            _ => {
                let (loaded, snapshot) = gavel_contract::load_with_snapshot(&gw.contract_path)
                    .map_err(|errors| Failure::invalid(errors.to_string()))?;
                if loaded.contract.version.0 != *running {
                    return Err(Failure::invalid(
                        "the contract file changed since the gateway loaded it; ask again once it has reloaded",
                    ));
                }
                snapshot
            }
        };
        // One pack at a time, on a connection of its own: a pack reads the whole ledger (and
        // verifies it), which must not hold up the queries and payloads of decisions.
        // A build that panicked poisons the lock but holds nothing: the next may go on.
        let _one_at_a_time = match gw.building_evidence.try_lock() {
            Ok(held) => held,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                return Err(Failure::invalid(
                    "an evidence pack is being built; ask again once it is done",
                ))
            }
        };
        let signer = crate::ledger::load_key(&gw.db_path)?;
        let sink = crate::ledger::open_reader(&gw.db_path)?;
        let pack = Pack::build(engine.contract(), &snapshot, &gw.store, &sink, &signer, &wanted)?;
        let (record_id, receipt) = pack.record(&gw.ledger, &caller.principal, &wanted)?;
        let files: serde_json::Map<String, Value> = pack
            .files
            .iter()
            .map(|(path, bytes)| {
                let content = match std::str::from_utf8(bytes) {
                    Ok(text) => json!({ "text": text }),
                    Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) }),
                };
                (path.clone(), content)
            })
            .collect();
        Ok(json!({ "deployment": wanted.deployment, "manifest_sha256": pack.manifest_sha256(), "record_id": record_id, "ledger_index": receipt.index, "files": files }))
    })
    .await
}

pub async fn pubkey(State(gw): State<Arc<Gateway>>) -> ApiResult<Json<Value>> {
    act(gw, |gw| Ok(json!({ "pubkey": gavel_ledger_sqlite::public_key(&crate::ledger::load_key(&gw.db_path)?) }))).await
}

async fn body_of<T: serde::de::DeserializeOwned>(
    gw: &Gateway,
    request: Request,
) -> Result<T, ApiError> {
    typed(&gw.read_body(request.into_body()).await?)
}
