//! Errors as the gateway answers them: OpenAI's error body shape (`{"error": {"message",
//! "type", "param", "code"}}`), so the official clients raise their usual exceptions, with
//! gavel's reason code as `code` and the decision's id and reasons alongside.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use gavel_engine::{Decision, ReasonCode, Verdict};

use crate::failure::{Failure, EXIT_AUTH, EXIT_INVALID, EXIT_USAGE};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// gavel's reason code, e.g. `approval.missing`, or a request error such as `invalid_json`.
    pub code: String,
    pub message: String,
    pub retry_after_seconds: Option<u64>,
    pub decision: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            retry_after_seconds: None,
            decision: None,
        }
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// Governance could not decide: the answer is a refusal, never a silent pass.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ReasonCode::GovernanceUnavailable.as_str(),
            message,
        )
    }

    /// A decision that does not let the request run, as the proxy answers it.
    pub fn from_decision(decision: &Decision, shown: Value) -> Self {
        let (status, code, message) = match decision.reasons.first() {
            Some(reason) => (
                status_of(decision),
                reason.code.as_str().to_string(),
                reason.message.clone(),
            ),
            None => (
                status_of(decision),
                ReasonCode::GovernanceUnavailable.as_str().to_string(),
                "refused without a reason; failing closed".to_string(),
            ),
        };
        let message = match (&decision.verdict, &decision.first_decision_id) {
            (Verdict::NoOp, Some(first)) => format!("{message} (first decision {first})"),
            _ => message,
        };
        ApiError {
            status,
            code,
            message,
            retry_after_seconds: decision.retry_after_seconds,
            decision: Some(shown),
        }
    }

    /// OpenAI's `type` for the status, which some clients show.
    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_denied",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::CONFLICT => "conflict_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            s if s.is_server_error() => "governance_error",
            _ => "invalid_request_error",
        }
    }

    /// The error object (the value of `error`), also used as a terminal stream event.
    pub fn body(&self) -> Value {
        let mut error = json!({
            "message": self.message,
            "type": self.kind(),
            "param": null,
            "code": self.code,
        });
        if let Some(decision) = &self.decision {
            error["decision_id"] = decision["decision_id"].clone();
            error["reasons"] = decision["reasons"].clone();
            if let Some(first) = decision.get("first_decision_id") {
                error["first_decision_id"] = first.clone();
            }
        }
        json!({ "error": error })
    }
}

/// SPEC section 3: BLOCK 403; COOLDOWN 429 for budgets and rates, 503 otherwise; a duplicate
/// 409; anything else that refuses (a dry run through the proxy cannot happen) 403.
pub fn status_of(decision: &Decision) -> StatusCode {
    match decision.verdict {
        Verdict::Allow => StatusCode::OK,
        Verdict::Block => {
            if decision
                .reason_codes()
                .any(|c| c == ReasonCode::GovernanceUnavailable)
            {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::FORBIDDEN
            }
        }
        Verdict::Cooldown => {
            if decision
                .reason_codes()
                .any(|c| c.as_str().starts_with("budget."))
            {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
        Verdict::NoOp => {
            if decision.first_decision_id.is_some() {
                StatusCode::CONFLICT
            } else {
                StatusCode::OK
            }
        }
    }
}

impl From<Failure> for ApiError {
    fn from(failure: Failure) -> Self {
        let (status, code) = match (failure.conflict, failure.exit_code) {
            (Some(code), _) => (StatusCode::CONFLICT, code),
            (None, EXIT_INVALID | EXIT_USAGE) => (StatusCode::BAD_REQUEST, "invalid_request"),
            // Keys are checked before a handler runs (401 there); an action's own refusal of
            // the caller (not your decision, not your role) is a 403.
            (None, EXIT_AUTH) => (StatusCode::FORBIDDEN, "not_allowed"),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                ReasonCode::GovernanceUnavailable.as_str(),
            ),
        };
        ApiError::new(status, code, failure.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        retry_after(&mut response, self.retry_after_seconds);
        if let Some(id) = self
            .decision
            .as_ref()
            .and_then(|d| d["decision_id"].as_str())
            .and_then(|id| HeaderValue::from_str(id).ok())
        {
            response.headers_mut().insert("x-gavel-decision-id", id);
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Sets `Retry-After` (whole seconds) when a COOLDOWN says when to retry.
pub fn retry_after(response: &mut Response, seconds: Option<u64>) {
    if let Some(value) = seconds.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
}
