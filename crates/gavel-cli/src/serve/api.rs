//! The decide API (`/v1/decide`, `/v1/outcome`, `/v1/feedback`: the same JSON as the CLI) and
//! the operational endpoints (`/healthz`, `/readyz`, `/metrics`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use gavel_engine::{parse_request, Usage};
use gavel_ledger::RecordKind;
use gavel_store::KeyRecord;

use super::error::{retry_after, status_of, ApiError, ApiResult};
use super::gateway::{parse_json, Gateway};
use crate::cmd::decide::{own_decision, settle_outcome};
use crate::context::{new_id, now};

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    if gw.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: loading the contract and the ledger",
        )
            .into_response()
    }
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutcomeBody {
    decision_id: String,
    deployment: String,
    usage: Usage,
}

/// `POST /v1/outcome`: settles a decision's reservation with what it actually used.
pub async fn outcome(
    State(gw): State<Arc<Gateway>>,
    Extension(caller): Extension<KeyRecord>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let body: OutcomeBody = typed(&gw.read_body(body).await?)?;
    blocking(move || {
        settle_outcome(
            &gw.engine(),
            &gw.store,
            &gw.ledger,
            &*gw.ledger_reader()?,
            &caller.principal,
            &body.decision_id,
            &body.deployment,
            &body.usage,
        )
        .map_err(ApiError::from)
    })
    .await
    .map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    decision_id: String,
    /// An accuracy proxy in [0, 1] (a rating, a grader's score).
    #[serde(default)]
    score: Option<f64>,
    /// A labelled outcome (the ground truth once known), e.g. `true`, `"fraud"`.
    #[serde(default)]
    label: Option<Value>,
    /// Declared features (numbers or categories) for drift and fairness monitoring.
    #[serde(default)]
    features: serde_json::Map<String, Value>,
}

/// `POST /v1/feedback`: records an accuracy proxy for one of the caller's decisions.
pub async fn feedback(
    State(gw): State<Arc<Gateway>>,
    Extension(caller): Extension<KeyRecord>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let body: FeedbackBody = typed(&gw.read_body(body).await?)?;
    if body.score.is_none() && body.label.is_none() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "feedback needs a `score` in [0, 1], a `label`, or both",
        ));
    }
    if body.score.is_some_and(|s| !(0.0..=1.0).contains(&s)) {
        return Err(ApiError::bad_request(
            "invalid_request",
            "`score` must be between 0 and 1",
        ));
    }
    if let Some((name, _)) = body
        .features
        .iter()
        .find(|(_, v)| !(v.is_number() || v.is_string() || v.is_boolean()))
    {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("feature `{name}` must be a number, a string or a boolean"),
        ));
    }
    blocking(move || {
        let decided = own_decision(
            &*gw.ledger_reader()?,
            &body.decision_id,
            &caller.principal,
            "give feedback",
        )?;
        let record = json!({
            "principal": caller.principal,
            "decision_id": body.decision_id,
            "deployment": decided["deployment"],
            "feedback": { "score": body.score, "label": body.label, "features": body.features },
        });
        let id = new_id("fbk")?;
        let receipt = gw.ledger.record(RecordKind::Outcome, now(), &id, &record)?;
        Ok(json!({ "feedback_id": id, "decision_id": body.decision_id, "receipt": receipt }))
    })
    .await
    .map(Json)
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
