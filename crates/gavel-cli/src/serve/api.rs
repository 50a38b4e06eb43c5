//! The decide API (`/v1/decide`, `/v1/outcome`, `/v1/feedback`: the same JSON as the CLI) and
//! the operational endpoints (`/healthz`, `/readyz`, `/metrics`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use gavel_engine::{parse_request, Usage};
use gavel_ledger::RecordKind;
use gavel_store::KeyRecord;

use super::error::{status_of, ApiError, ApiResult};
use super::gateway::{parse_json, Gateway};
use crate::cmd::decide::settle_outcome;
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
    request: Request,
) -> Response {
    let body = match gw.read_body(request.into_body()).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let request = match parse_request(&body) {
        Ok(request) => request,
        Err(e) => return ApiError::bad_request("invalid_request", e.0).into_response(),
    };
    let ruling = gw.decide(request, &caller.principal).await;
    let status = match status_of(&ruling.decision) {
        StatusCode::CONFLICT => StatusCode::OK,
        other => other,
    };
    let mut response = (status, Json(ruling.shown())).into_response();
    if let Some(seconds) = ruling.decision.retry_after_seconds {
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    response
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
    request: Request,
) -> Response {
    let result = async {
        let body: OutcomeBody = typed(&gw.read_body(request.into_body()).await?)?;
        let gw = gw.clone();
        blocking(move || {
            let engine = gw.engine();
            let sink = gw
                .ledger_reader
                .lock()
                .map_err(|_| ApiError::unavailable("the ledger reader is unavailable"))?;
            settle_outcome(
                &engine,
                &gw.store,
                &gw.ledger,
                &sink,
                &caller.principal,
                &body.decision_id,
                &body.deployment,
                &body.usage,
            )
            .map_err(ApiError::from)
        })
        .await
    }
    .await;
    reply(result)
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
    request: Request,
) -> Response {
    let result = async {
        let body: FeedbackBody = typed(&gw.read_body(request.into_body()).await?)?;
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
        let decided = {
            let sink = gw
                .ledger_reader
                .lock()
                .map_err(|_| ApiError::unavailable("the ledger reader is unavailable"))?;
            sink.record_by_id(&body.decision_id)
                .map_err(|e| ApiError::unavailable(format!("cannot read the ledger: {e}")))?
                .filter(|entry| entry.record.kind == RecordKind::Decision)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_request",
                        format!("no decision `{}` in the ledger", body.decision_id),
                    )
                })?
                .record
                .body
        };
        if decided["principal"].as_str() != Some(caller.principal.as_str()) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "not_your_decision",
                format!(
                    "decision `{}` was made for another principal; only it may give feedback",
                    body.decision_id
                ),
            ));
        }
        let record = json!({
            "principal": caller.principal,
            "decision_id": body.decision_id,
            "deployment": decided["deployment"],
            "feedback": { "score": body.score, "label": body.label, "features": body.features },
        });
        let id = new_id("fbk")?;
        let pending = gw.ledger.submit(RecordKind::Outcome, now(), &id, &record)?;
        let receipt =
            blocking(move || crate::ledger::wait(pending).map_err(ApiError::from)).await?;
        Ok(json!({ "feedback_id": id, "decision_id": body.decision_id, "receipt": receipt }))
    }
    .await;
    reply(result)
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

pub fn reply(result: ApiResult<Value>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(e) => e.into_response(),
    }
}
