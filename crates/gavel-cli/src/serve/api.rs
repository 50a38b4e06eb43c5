//! The decide API (`/v1/decide`, `/v1/outcome`, `/v1/feedback`: the same JSON as the CLI) and
//! the operational endpoints (`/healthz`, `/readyz`, `/metrics`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::Value;

use gavel_engine::{parse_request, Usage};
use gavel_store::KeyRecord;

use super::error::{retry_after, status_of, ApiError, ApiResult};
use super::gateway::{parse_json, Gateway};
use crate::cmd::decide::settle_outcome;
use crate::cmd::feedback::record_feedback;
use crate::monitoring::Reported;

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    if !gw.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: loading the contract and the ledger",
        )
            .into_response();
    }
    match gw.ledger.failure() {
        None => (StatusCode::OK, "ready").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}", ledger_stopped(why)),
        )
            .into_response(),
    }
}

/// What a stopped ledger means for the gateway, in one sentence.
pub fn ledger_stopped(why: &str) -> String {
    format!(
        "the ledger stopped accepting records after a failure ({why}); every decision is refused (BLOCK governance.unavailable) until gavel serve is restarted once the cause (a full disk, a failing device) is fixed"
    )
}

pub async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    let mut response = gw.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// `POST /v1/decide`: the decision, with its receipt, and the status its verdict maps to
/// (SPEC section 3): 200 ALLOW and NO_OP (a duplicate 409), 403 BLOCK, 429/503 COOLDOWN with
/// `Retry-After`.
pub async fn decide(
    State(gw): State<Arc<Gateway>>,
    Extension(caller): Extension<KeyRecord>,
    body: Body,
) -> ApiResult<Response> {
    let body = gw.read_body(body).await?;
    let request =
        parse_request(&body).map_err(|e| ApiError::bad_request("invalid_request", e.0))?;
    let ruling = gw.decide(Arc::new(request), &caller.principal).await;
    let status = match status_of(&ruling.decision) {
        StatusCode::CONFLICT => StatusCode::OK,
        other => other,
    };
    let mut response = (status, Json(ruling.shown())).into_response();
    retry_after(&mut response, ruling.decision.retry_after_seconds);
    Ok(response)
}

/// `POST /v1/outcome`: settles a decision's reservation with what it actually used, and
/// records what else the caller reports (latency, success, fallback, prediction, label, group,
/// features) for monitoring.
pub async fn outcome(
    State(gw): State<Arc<Gateway>>,
    Extension(caller): Extension<KeyRecord>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let mut fields = object(&gw.read_body(body).await?)?;
    let decision_id = take_string(&mut fields, "decision_id")?;
    let deployment = take_string(&mut fields, "deployment")?;
    let usage: Usage = serde_json::from_value(fields.remove("usage").unwrap_or(Value::Null))
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_request",
                format!("`usage` must be {{prompt_tokens, completion_tokens, tool_calls?}}: {e}"),
            )
        })?;
    let reported = reported(fields)?;
    blocking(move || {
        let recorded = settle_outcome(
            &gw.engine(),
            &gw.store,
            &gw.ledger,
            &*gw.ledger_reader()?,
            &caller.principal,
            &decision_id,
            &deployment,
            &usage,
            &reported,
        )?;
        gw.monitor
            .record_outcome(&recorded.deployment, &recorded.observed);
        Ok(recorded.answer)
    })
    .await
    .map(Json)
}

/// `POST /v1/feedback`: an accuracy proxy, a label, a prediction, a group or features for one
/// of the caller's decisions.
pub async fn feedback(
    State(gw): State<Arc<Gateway>>,
    Extension(caller): Extension<KeyRecord>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let mut fields = object(&gw.read_body(body).await?)?;
    let decision_id = take_string(&mut fields, "decision_id")?;
    let reported = reported(fields)?;
    blocking(move || {
        let recorded = record_feedback(
            &gw.store,
            &gw.ledger,
            &*gw.ledger_reader()?,
            &caller.principal,
            &decision_id,
            &reported,
        )?;
        gw.monitor
            .record_outcome(&recorded.deployment, &recorded.observed);
        Ok(recorded.answer)
    })
    .await
    .map(Json)
}

fn object(bytes: &[u8]) -> ApiResult<serde_json::Map<String, Value>> {
    match parse_json(bytes)? {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::bad_request(
            "invalid_request",
            "the body must be a JSON object",
        )),
    }
}

fn take_string(fields: &mut serde_json::Map<String, Value>, name: &str) -> ApiResult<String> {
    match fields.remove(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        _ => Err(ApiError::bad_request(
            "invalid_request",
            format!("`{name}` is required: a string"),
        )),
    }
}

/// The rest of the body as a report, strictly (unknown fields are errors).
fn reported(fields: serde_json::Map<String, Value>) -> ApiResult<Reported> {
    let reported: Reported = serde_json::from_value(Value::Object(fields)).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!("the body does not fit this route: {e}"),
        )
    })?;
    reported
        .check()
        .map_err(|why| ApiError::bad_request("invalid_request", why))?;
    Ok(reported)
}

/// Parses a JSON body into `T`, strictly.
pub fn typed<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    serde_json::from_value(parse_json(bytes)?).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!("the body does not fit this route: {e}"),
        )
    })
}

/// Runs store and ledger work (which blocks on SQLite and fsync) off the async workers.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::unavailable(format!("the work was lost: {e}")))?
}
